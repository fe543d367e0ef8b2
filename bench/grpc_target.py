"""A gRPC server with the standard health service (every service SERVING), for benchmarks.

    python -m bench.grpc_target            # prints its port, serves until stdin closes

From Python: ``with GrpcTarget() as target: target.port``. It runs in its own process, so the
probing process's CPU figures do not include the server's.
"""

from __future__ import annotations

import subprocess
import sys
from concurrent import futures
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class GrpcTarget:
    def __init__(self) -> None:
        self.port = 0
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> GrpcTarget:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.grpc_target"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        self.port = int(self._proc.stdout.readline())
        return self

    def __exit__(self, *_: object) -> None:
        if self._proc is not None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            self._proc.wait(timeout=15)


def main() -> None:
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or exits)
    server.stop(None)


if __name__ == "__main__":
    main()
