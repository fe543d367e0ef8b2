"""Benchmarks of sutazai-agent (not part of the package). See docs/performance.md."""
