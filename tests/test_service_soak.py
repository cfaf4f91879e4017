"""Soak: 8 clients on loopback for a while against one `coviax serve` (issue 13).

Mixed traffic: 1 % malformed uploads, 5 % uploads abandoned mid-stream, 10 % calls with a short
deadline, 3 % jobs cancelled by CancelJob, the rest plain scans. It fails on any status that the
action cannot explain, on resident memory of the server growing by more than 5 % after the warm-up,
on open file descriptors growing, on ``coviax_results_total`` not matching the job rows, on jobs
not in a final state at the end, and on any person name, ID, date or time of the scans' headers in the
server's log (its workers' too) or metrics. ``make test`` runs 3 minutes; ``make soak MINUTES=30``;
``COVIAX_SOAK_ENGINE=unet`` soaks a U-Net server.
"""

from __future__ import annotations

import collections
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import pytest

from service_support import free_port, header_identifiers, make_small_series

pytest.importorskip("grpc_health")

from coviax_api.coviax.v1 import coviax_pb2 as pb  # noqa: E402
from coviax_api.coviax.v1 import coviax_pb2_grpc as pb_grpc  # noqa: E402
from coviax_client import CoviaxClient  # noqa: E402

SECONDS = float(os.environ.get("COVIAX_SOAK_SECONDS", "180"))
#: kmeans (3D, in the workers) or unet (the shipped U-Net B in the server process, slices as they arrive)
ENGINE = os.environ.get("COVIAX_SOAK_ENGINE", "kmeans")
CLIENTS = 8
WARM_UP_FRACTION = 0.25
EXPECTED = {  # action -> status codes it may end with
    "plain": {"OK", "RESOURCE_EXHAUSTED"},
    "malformed": {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"},
    "abandoned": {"CANCELLED", "RESOURCE_EXHAUSTED"},
    "deadline": {"OK", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"},
    "cancelled": {"CANCELLED", "OK", "RESOURCE_EXHAUSTED"},
}


def _status(pid: int) -> tuple[int, int]:
    """(resident memory in bytes, open file descriptors) of a process."""
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def _requests(instances, header, stop_after=None, hold: threading.Event | None = None):
    yield pb.SegmentRequest(header=header)
    for i, data in enumerate(instances):
        if stop_after is not None and i == stop_after:
            if hold is not None:
                hold.wait(30)
            return
        yield pb.SegmentRequest(chunk=pb.DicomChunk(instance_index=i, data=data, last=True))
    yield pb.SegmentRequest(end=pb.EndOfScan())


def _one(stub, rng: random.Random, instances, junk) -> tuple[str, str]:
    """One action; returns (action, status code name)."""
    header = pb.Header(options=pb.SegmentOptions(outputs=["report"]), expected_instances=len(instances))
    roll = rng.random()
    try:
        if roll < 0.01:
            action = "malformed"
            list(stub.Segment(_requests(junk, header), timeout=60))
        elif roll < 0.06:
            action = "abandoned"
            hold = threading.Event()
            call = stub.Segment(_requests(instances, header, stop_after=len(instances) // 2, hold=hold), timeout=60)
            next(iter(call))  # accepted
            time.sleep(rng.uniform(0.0, 0.3))
            call.cancel()
            hold.set()
            return action, "CANCELLED"
        elif roll < 0.16:
            action = "deadline"
            list(stub.Segment(_requests(instances, header), timeout=rng.uniform(0.2, 2.0)))
        elif roll < 0.19:
            action = "cancelled"
            call = stub.Segment(_requests(instances, header), timeout=60)
            job_id = next(iter(call)).accepted.job_id
            stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=30)
            list(call)
        else:
            action = "plain"
            list(stub.Segment(_requests(instances, header), timeout=120))
        return action, "OK"
    except grpc.RpcError as err:
        return action, err.code().name


def _metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def _results(text: str) -> dict[str, float]:
    return {m.group(1): float(m.group(2)) for m in re.finditer(r'^coviax_results_total\{code="(\w+)"\} (\S+)$', text, re.M)}


@pytest.mark.slow
def test_soak(tmp_path):
    series = make_small_series(tmp_path / "series", n=8)
    instances = [p.read_bytes() for p in sorted(series.glob("*.dcm"))]
    junk = [instances[0][: len(instances[0]) // 2]] + instances[1:3]
    port, metrics_port, data = free_port(), free_port(), tmp_path / "data"
    cmd = [sys.executable, "-m", "coviax.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--metrics-port", str(metrics_port), "--data-dir", str(data), "--workers", "2",
           "--max-concurrent-scans", "4", "--lungs", "classical", "--engine", ENGINE, "--drain-seconds", "10"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVIAX_")}
    server = subprocess.Popen(cmd, stdout=open(tmp_path / "server.log", "wb"), stderr=subprocess.STDOUT, env=env)
    try:
        with CoviaxClient(f"127.0.0.1:{port}", retries=0, timeout=60) as client:
            client.wait_ready(120)
            stub = pb_grpc.CoviaxStub(client.channel)
            outcomes: collections.Counter = collections.Counter()
            unexpected: list[str] = []
            stop_at = time.monotonic() + SECONDS
            warm_until = time.monotonic() + SECONDS * WARM_UP_FRACTION
            lock = threading.Lock()

            def worker(seed: int) -> None:
                rng = random.Random(seed)
                with CoviaxClient(f"127.0.0.1:{port}", retries=0, timeout=60) as own:
                    own_stub = pb_grpc.CoviaxStub(own.channel)
                    while time.monotonic() < stop_at:
                        action, code = _one(own_stub, rng, instances, junk)
                        with lock:
                            outcomes[(action, code)] += 1
                            if code not in EXPECTED[action]:
                                unexpected.append(f"{action}: {code}")
                        if code == "RESOURCE_EXHAUSTED":  # the server is full: back off, as clients should
                            time.sleep(rng.uniform(0.2, 1.0))

            threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(CLIENTS)]
            for t in threads:
                t.start()
            while time.monotonic() < warm_until:
                time.sleep(0.5)
            warm = _status(server.pid)
            for t in threads:
                t.join(SECONDS + 180)
            # idle: every job reaches a final state
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                active = [j for s in ("RECEIVING", "QUEUED", "RUNNING") for j in client.list_jobs(state=s)]
                if not active:
                    break
                time.sleep(1)
            time.sleep(2)
            end = _status(server.pid)
            rows = collections.Counter()
            token = ""
            while True:
                page = stub.ListJobs(pb.ListJobsRequest(page_size=1000, page_token=token), timeout=60)
                for j in page.jobs:
                    rows["OK" if j.state == pb.DONE else j.error.code] += 1
                token = page.next_page_token
                if not token:
                    break
            metrics_text = _metrics_text(metrics_port)
            metrics = _results(metrics_text)
            # privacy: no name, ID, date or time of the scans' headers in what the server (its workers and
            # decoders write to the same log) logged or exports as metrics
            log_text = (tmp_path / "server.log").read_text(errors="replace")
            leaked = sorted(v for v in header_identifiers(series) if v in log_text or v in metrics_text)
            print(f"\nsoak: {SECONDS:.0f} s, {CLIENTS} clients, {sum(outcomes.values())} calls; server RSS "
                  f"{warm[0] / 2**20:.0f} -> {end[0] / 2**20:.0f} MiB, fds {warm[1]} -> {end[1]}")
            for (action, code), n in sorted(outcomes.items()):
                print(f"  {action:10s} {code:20s} {n}")
            print(f"  rows by code {dict(rows)}; coviax_results_total {metrics}")
            assert not unexpected, unexpected[:20]
            assert not leaked, f"header values in the server's log or metrics: {leaked[:5]}"
            assert not active, f"{len(active)} jobs not in a final state"
            assert {k: v for k, v in metrics.items() if v} == {k: float(v) for k, v in rows.items()}
            assert end[0] <= warm[0] * 1.05, f"server RSS grew from {warm[0]} to {end[0]} bytes after the warm-up"
            assert end[1] <= warm[1] + 2, f"open file descriptors grew from {warm[1]} to {end[1]}"
            assert outcomes[("plain", "OK")] > 0
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
