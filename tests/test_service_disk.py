"""Disk pressure on a real small filesystem (a tmpfs mounted by the test; needs root, skipped otherwise).

Issue 13: a disk that fills during an upload gives RESOURCE_EXHAUSTED, leaves no partial upload and no
row stuck in RECEIVING, and the service recovers by itself once there is room again.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from service_support import make_small_series, running_server, sample_value, wait_for

pytest.importorskip("grpc_health")

from coviax_api.coviax.v1 import coviax_pb2 as pb  # noqa: E402
from coviax_api.coviax.v1 import coviax_pb2_grpc as pb_grpc  # noqa: E402
from coviax_client import CoviaxClient, CoviaxClientError  # noqa: E402


@pytest.fixture()
def small_disk(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount_point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(mount_point, leave: int):
    """A file that takes all the space but ``leave`` bytes."""
    st = os.statvfs(mount_point)
    free = st.f_bavail * st.f_frsize
    filler = mount_point / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


@pytest.mark.slow
def test_a_full_disk_during_an_upload_and_the_recovery(small_disk, tmp_path):
    series = make_small_series(tmp_path / "series", n=12)
    scan_bytes = sum(p.stat().st_size for p in series.glob("*.dcm"))
    with running_server(small_disk / "data", workers=1) as st, \
            CoviaxClient(f"127.0.0.1:{st.port}", timeout=120, retries=0) as client:
        filler = _fill(small_disk, leave=scan_bytes // 3)
        with pytest.raises(CoviaxClientError) as err:
            client.segment(series, outputs=["report"], idempotency_key="full-disk")
        assert err.value.code == "RESOURCE_EXHAUSTED" and "disk is full" in err.value.message, err.value
        stub = pb_grpc.CoviaxStub(client.channel)
        [job] = stub.ListJobs(pb.ListJobsRequest(), timeout=30).jobs
        assert job.state == pb.FAILED and job.error.code == "RESOURCE_EXHAUSTED"
        assert not (small_disk / "data" / "jobs" / job.job_id).exists()  # no partial upload left
        wait_for(lambda: sample_value(st, "coviax_scans_in_flight") == 0, what="the slot released")
        assert client.health() == "SERVING"
        filler.unlink()  # room again: the same key makes a new job, which runs
        result = client.segment(series, outputs=["report"], idempotency_key="full-disk")
        assert result.job_id != job.job_id and client.get_job(result.job_id).state == pb.DONE


@pytest.mark.slow
def test_a_disk_that_fills_while_the_results_are_written(small_disk, tmp_path):
    """The upload fits but the artifacts do not: RESOURCE_EXHAUSTED, no partial artifact or job folder, no
    row left RUNNING, the worker still serves, and the same scan runs once there is room."""
    series = make_small_series(tmp_path / "series", n=12)
    scan_bytes = sum(p.stat().st_size for p in series.glob("*.dcm"))
    outputs = ["report", "nifti", "seg", "png", "html", "sr", "sc"]
    with running_server(small_disk / "data", workers=1) as st, \
            CoviaxClient(f"127.0.0.1:{st.port}", timeout=180, retries=0) as client:
        filler = _fill(small_disk, leave=scan_bytes + 96 * 1024)  # the upload and the rows fit, the results not
        with pytest.raises(CoviaxClientError) as err:
            client.segment(series, outputs=outputs, idempotency_key="full-at-export")
        assert err.value.code == "RESOURCE_EXHAUSTED" and "disk is full" in err.value.message, err.value
        stub = pb_grpc.CoviaxStub(client.channel)
        [job] = stub.ListJobs(pb.ListJobsRequest(), timeout=30).jobs
        assert job.state == pb.FAILED and job.error.code == "RESOURCE_EXHAUSTED"
        assert not (small_disk / "data" / "jobs" / job.job_id).exists()  # no partial artifact left
        assert not stub.GetJob(pb.GetJobRequest(job_id=job.job_id), timeout=30).artifacts
        wait_for(lambda: sample_value(st, "coviax_scans_in_flight") == 0, what="the slot released")
        assert client.health() == "SERVING"
        filler.unlink()
        result = client.segment(series, outputs=outputs, idempotency_key="full-at-export")
        assert result.job_id != job.job_id and client.get_job(result.job_id).state == pb.DONE
