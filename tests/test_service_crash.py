"""The server SIGKILLed at random points, again and again, then restarted on the same data folder (issue 13).

Only the server process is killed (not its process group), as the kernel's OOM killer or a node failure
would. After each kill and restart, all of these must hold:

- no acknowledged result is lost: every job seen DONE before a kill is DONE after it, same artifacts;
- ``PRAGMA integrity_check`` of the job database is ``ok``;
- no orphan files or rows: every job folder belongs to an active job or to a DONE job's outputs, and
  every artifact of a DONE job is on disk;
- no orphan processes: the killed server's workers and resource tracker are gone.

``make test`` runs 3 kills; ``make crashtest`` runs ``COVIAX_CRASH_KILLS`` (default 100 there).
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from service_support import free_port, make_small_series

pytest.importorskip("grpc_health")

from coviax_api.coviax.v1 import coviax_pb2 as pb  # noqa: E402
from coviax_client import CoviaxClient  # noqa: E402

KILLS = int(os.environ.get("COVIAX_CRASH_KILLS", "3"))
FINAL = (pb.DONE, pb.FAILED, pb.CANCELLED)


def _start(port: int, data, log_path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "coviax.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--metrics-port", "0", "--data-dir", str(data), "--workers", "1", "--max-concurrent-scans", "2",
           "--lungs", "classical", "--engine", "kmeans", "--drain-seconds", "5"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVIAX_")}
    return subprocess.Popen(cmd, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, env=env)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                    found.append(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _check_store(data) -> None:
    conn = sqlite3.connect(f"file:{data / 'coviax.db'}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def _check_no_orphans(data, client) -> None:
    jobs = {}
    for state in (pb.RECEIVING, pb.QUEUED, pb.RUNNING, pb.DONE, pb.FAILED, pb.CANCELLED):
        jobs.update({j.job_id: j for j in client.list_jobs(state=pb.JobState.Name(state))})
    for folder in (data / "jobs").iterdir():
        job = jobs.get(folder.name)
        assert job is not None, f"an orphan folder {folder.name}"
        assert job.state in (pb.QUEUED, pb.RUNNING, pb.DONE), f"a folder left by the {pb.JobState.Name(job.state)} job"
    for job_id, job in jobs.items():
        if job.state == pb.DONE and not job.artifacts_expired:
            for ref in client.get_job(job_id).artifacts:
                assert list((data / "jobs" / job_id).glob(f"out-*/{ref.file_name}")), f"{job_id}: {ref.name} lost"


@pytest.mark.slow
def test_sigkill_at_random_points_loses_nothing(tmp_path):
    rng = random.Random(13)
    series = make_small_series(tmp_path / "series", n=8)
    port, data, log = free_port(), tmp_path / "data", tmp_path / "server.log"
    acknowledged: dict[str, dict[str, str]] = {}  # job id -> artifact sha256 by name, seen DONE before a kill
    accepted: set[str] = set()
    for kill in range(KILLS + 1):
        server = _start(port, data, log)
        try:
            with CoviaxClient(f"127.0.0.1:{port}", retries=0, timeout=120) as client:
                client.wait_ready(120)
                # after a restart: nothing acknowledged is lost, nothing is left behind
                for job_id, sums in acknowledged.items():
                    job = client.get_job(job_id)
                    assert job.state == pb.DONE and {a.name: a.sha256 for a in job.artifacts} == sums, job_id
                _check_no_orphans(data, client)
                if kill == KILLS:  # the last start: every accepted job ends, then a clean stop
                    for job_id in accepted:
                        assert client.wait(job_id, timeout=300).state in FINAL
                    break
                _, events = client.submit_batch([(f"k{kill}-{i}", series) for i in range(2)], outputs=["report"])
                accepted |= {e.accepted.job_id for e in events if e.WhichOneof("event") == "accepted"}
                deadline = time.monotonic() + rng.uniform(0.0, 6.0)  # kill at a random point of upload/analysis/export
                while time.monotonic() < deadline:
                    for job in client.list_jobs(state="DONE"):
                        if job.job_id not in acknowledged:
                            acknowledged[job.job_id] = {a.name: a.sha256 for a in client.get_job(job.job_id).artifacts}
                    time.sleep(0.05)
                family = _children(server.pid)
                os.kill(server.pid, signal.SIGKILL)
                server.wait(30)
            deadline = time.monotonic() + 15
            while [p for p in family if _alive(p)] and time.monotonic() < deadline:
                time.sleep(0.2)
            left = [p for p in family if _alive(p)]
            for p in left:  # never leave them behind, even when the test fails
                os.kill(p, signal.SIGKILL)
            assert not left, f"processes of the killed server still running after 15 s: {left}"
            _check_store(data)
        finally:
            if server.poll() is None:
                if kill == KILLS:
                    server.send_signal(signal.SIGTERM)
                    assert server.wait(60) == 0
                else:
                    server.kill()
                    server.wait(10)
    assert acknowledged, "no job finished between the kills; give them more time"
    assert "Lung_Dx" not in log.read_text()
