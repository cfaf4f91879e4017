"""End to end through the gRPC API on loopback, for `make bench`.

Starts `coviax serve` in a subprocess (U-Net engine, classical lungs, a fresh
data folder), waits for grpc.health.v1 SERVING, then sends the scan as DICOM
instances with the SDK: DICOM in, report and DICOM SEG out. Reports the median
latency of sequential scans and the throughput of N concurrent clients.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(target: str, timeout: float = 300) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.time() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.time() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise TimeoutError(f"server at {target} not SERVING after {timeout} s")


def run_api_bench(scan_dir: Path, weights: str, cache: Path, repeats: int = 3, clients: int = 4) -> dict:
    from coviax_client.sdk import CoviaxClient

    port, metrics_port = free_port(), free_port()
    target = f"127.0.0.1:{port}"
    data = tempfile.mkdtemp(prefix="coviax-bench-", dir=cache)
    env = {**os.environ, "COVIAX_ENGINE": "unet", "COVIAX_WEIGHTS": weights, "COVIAX_LUNGS": "classical",
           "COVIAX_MAX_QUEUED_SLICES": "8192", "COVIAX_MAX_CONCURRENT_SCANS": str(clients)}
    server = subprocess.Popen(
        [sys.executable, "-m", "coviax.cli", "serve", "--port", str(port), "--metrics-port", str(metrics_port),
         "--data-dir", data],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_serving(target)

        def one(i: int) -> float:
            started = time.perf_counter()
            with CoviaxClient(target, timeout=1800) as client:
                client.segment(str(scan_dir), outputs=("report", "seg"), idempotency_key=f"bench-{i}-{time.time_ns()}")
            return time.perf_counter() - started

        one(-1)  # warm-up
        latencies = [one(i) for i in range(repeats)]
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(100, 100 + clients)))
        concurrent_s = time.perf_counter() - started
        return {
            "median_s": statistics.median(latencies), "min_s": min(latencies), "repeats": repeats,
            "clients": clients, "scans_per_s": clients / concurrent_s,
        }
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
