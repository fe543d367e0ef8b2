"""sutazai-agent: health and service-discovery sidecar for the SutazAI stack."""

__version__ = "0.1.0"
