"""`coviax serve` killed (SIGKILL) in the middle of a batch, then restarted on the same data folder.

Finished results are still there (same artifacts, same checksums), the queued
and running jobs whose upload was complete resume and finish, an upload cut
by the crash fails cleanly with a message, and SIGTERM drains and exits 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest

from service_support import free_port, make_small_series, wait_for

pytest.importorskip("grpc_health")

from coviax_api.coviax.v1 import coviax_pb2 as pb  # noqa: E402
from coviax_api.coviax.v1 import coviax_pb2_grpc as pb_grpc  # noqa: E402
from coviax_client import CoviaxClient  # noqa: E402

N_SCANS = 4


def _start(port: int, data, log_path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "coviax.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--metrics-port", "0", "--data-dir", str(data), "--workers", "1", "--max-concurrent-scans", "2",
           "--lungs", "classical", "--engine", "kmeans", "--drain-seconds", "20"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVIAX_")}
    return subprocess.Popen(cmd, stdout=open(log_path, "ab"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)  # its own process group: the kill takes the workers too


@pytest.mark.slow
def test_restart_in_the_middle_of_a_batch(tmp_path):
    series = make_small_series(tmp_path / "series", n=24, step=2)  # 256 x 256: about 2 s per job
    port, data, log = free_port(), tmp_path / "data", tmp_path / "server.log"
    server = _start(port, data, log)
    stall = threading.Event()
    try:
        client = CoviaxClient(f"127.0.0.1:{port}", retries=0, timeout=120)
        client.wait_ready(90)
        # an upload in progress at the crash: header and two instances, then the client stalls
        one = sorted(series.glob("*.dcm"))[0].read_bytes()

        def stalled():
            yield pb.SegmentRequest(header=pb.Header(options=pb.SegmentOptions(outputs=["report"])))
            for i in range(2):
                yield pb.SegmentRequest(chunk=pb.DicomChunk(instance_index=i, data=one, last=True))
            stall.wait(120)

        call = pb_grpc.CoviaxStub(client.channel).Segment(stalled(), timeout=120)
        receiving_id = next(iter(call)).accepted.job_id  # holds one of the two slots
        batch_id, events = client.submit_batch([(f"s{i}", series) for i in range(N_SCANS)])
        job_ids = [e.accepted.job_id for e in events]  # they run one at a time, in the other slot
        assert len(job_ids) == N_SCANS and all(job_ids)

        def states():
            return {j.job_id: j.state for j in client.list_jobs(batch_id=batch_id)}

        wait_for(lambda: pb.DONE in states().values(), timeout=120, interval=0.02, what="a first finished job")
        before = states()
        done_before = [j for j in job_ids if before[j] == pb.DONE]
        checksums = {j: {a.name: a.sha256 for a in client.get_job(j).artifacts} for j in done_before}
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(30)
        stall.set()
        client.close()
        assert len(done_before) < N_SCANS, "every job finished before the kill; make the scans bigger"

        server = _start(port, data, log)
        client = CoviaxClient(f"127.0.0.1:{port}", retries=0, timeout=120)
        client.wait_ready(90)
        for j in done_before:  # finished results are still there, unchanged
            job = client.get_job(j)
            assert job.state == pb.DONE and {a.name: a.sha256 for a in job.artifacts} == checksums[j]
        path = client.download(done_before[0], "dicom_seg", tmp_path / "dl")
        assert path.stat().st_size > 0
        for j in job_ids:  # the rest complete
            job = client.wait(j, timeout=120)
            assert job.state == pb.DONE, (j, job.error)
            assert job.result.input.slices == 24
        lost = client.get_job(receiving_id)
        assert lost.state == pb.FAILED and lost.error.code == "UNAVAILABLE"
        assert "restarted before the upload was complete" in lost.error.message
        assert not (data / "jobs" / receiving_id).exists()
        client.close()

        server.send_signal(signal.SIGTERM)  # drain, then exit 0
        assert server.wait(30) == 0
        text = log.read_text()
        assert "resumed after a restart" in text and "SIGTERM received" in text
        assert "Lung_Dx" not in text  # no patient name or ID in the log
    finally:
        stall.set()
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)


def test_a_second_server_cannot_own_the_same_data_folder(tmp_path):
    from coviax.errors import OptionError
    from coviax_service.store import Store

    first = Store(tmp_path)
    first.open()
    try:
        with pytest.raises(OptionError, match="another coviax server owns this data folder"):
            Store(tmp_path).open()
    finally:
        first.close()
    second = Store(tmp_path)
    second.open()
    second.close()

