"""Limits, cancellation, deadlines and draining, on a U-Net server whose engine can be held (a gate).

The U-Net is a random-initialised small checkpoint (the shipped U-Net B does
not exist yet): these tests check the plumbing, not the numbers.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from service_support import GatedEngine, make_small_series, running_server, sample_value, tiny_unet_engine, wait_for

pytest.importorskip("torch")
pytest.importorskip("grpc_health")

from coviax_api.coviax.v1 import coviax_pb2 as pb  # noqa: E402
from coviax_api.coviax.v1 import coviax_pb2_grpc as pb_grpc  # noqa: E402
from coviax_client import CoviaxClient, CoviaxClientError  # noqa: E402

QUEUE_LIMIT = 6


@pytest.fixture(scope="module")
def small_series(tmp_path_factory):
    return make_small_series(tmp_path_factory.mktemp("small") / "series", n=16)


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    engine, weights = tiny_unet_engine(tmp_path_factory.mktemp("weights"))
    gated = GatedEngine(engine)
    data = tmp_path_factory.mktemp("data")
    with running_server(data, prebuilt=gated, engine="unet", max_concurrent_scans=2,
                        max_queued_slices=QUEUE_LIMIT, batch_slices=2) as st:
        st.gated = gated
        yield st
        gated.gate.set()


@pytest.fixture()
def server(gated):
    gated.gated.gate.set()
    wait_for(lambda: not gated.jobs.slot_holders and gated.jobs.queue.depth == 0, what="an idle server")
    yield gated
    gated.gated.gate.set()


def _client(st, **kw):
    return CoviaxClient(f"127.0.0.1:{st.port}", timeout=kw.pop("timeout", 60), retries=0, **kw)


def _instances(series):
    return [p.read_bytes() for p in sorted(series.glob("*.dcm"))]


def test_unet_streams_slices_and_reports_model(server, small_series):
    with _client(server) as c:
        events = []
        result = c.segment(small_series, progress=events.append, outputs=["report"])
        info = c.model_info()
    assert result.engine == "unet" and result.model.startswith("unet_random@sha256:")
    assert info.engine == "unet" and len(info.weights_sha256) == 64 and result.model.endswith(info.weights_sha256[:12])
    # slices were segmented while the upload was still going (streaming), not only after it
    assert any(e.get("stage") == "upload" and e.get("slices_segmented", 0) > 0 for e in events)
    assert result.report["input"]["slices"] == 16


def test_cancelled_stream_frees_its_resources(server, small_series):
    st = server
    st.gated.gate.clear()  # hold the engine: slices stay in the queue
    release_upload = threading.Event()
    data = _instances(small_series)

    def requests():
        yield pb.SegmentRequest(header=pb.Header(options=pb.SegmentOptions(outputs=["report"])))
        for i, blob in enumerate(data[:5]):
            yield pb.SegmentRequest(chunk=pb.DicomChunk(instance_index=i, data=blob, last=True))
        release_upload.wait(30)  # the upload stalls here, mid-scan

    with _client(st) as c:
        call = pb_grpc.CoviaxStub(c.channel).Segment(requests(), timeout=60)
        job_id = next(iter(call)).accepted.job_id
        wait_for(lambda: st.jobs.queue.depth >= 3, what="slices queued")
        assert sample_value(st, "coviax_scans_in_flight") == 1
        call.cancel()
        release_upload.set()
        wait_for(lambda: sample_value(st, "coviax_scans_in_flight") == 0, what="the slot released")
        job = c.get_job(job_id)
        assert job.state == pb.CANCELLED and job.error.code == "CANCELLED"
        assert st.jobs.queue.depth <= 2  # only the batch already on the (held) engine is left
        wait_for(lambda: not (st.jobs.store.job_dir(job_id)).exists(), what="the upload removed")
        st.gated.gate.set()
        wait_for(lambda: st.jobs.queue.depth == 0, what="an empty queue")
        assert c.segment(small_series, outputs=["report"]).ratios_pct is not None
        assert c.health() == "SERVING"


def test_full_queue_is_resource_exhausted_then_later_requests_succeed(server, small_series):
    st = server
    st.gated.gate.clear()
    with ThreadPoolExecutor(1) as pool, _client(st) as a, _client(st) as b:
        first = pool.submit(a.segment, small_series, outputs=["report"])
        wait_for(lambda: st.jobs.queue.depth >= QUEUE_LIMIT, what="a full queue")
        time.sleep(0.2)
        assert st.jobs.queue.depth <= QUEUE_LIMIT + 1  # the upload is held back, not queued without limit
        with pytest.raises(CoviaxClientError) as err:
            b.segment(small_series, outputs=["report"])
        assert err.value.code == "RESOURCE_EXHAUSTED" and "COVIAX_MAX_QUEUED_SLICES" in err.value.message
        assert b.health() == "SERVING"
        st.gated.gate.set()
        assert first.result(60).report["input"]["slices"] == 16
        assert b.segment(small_series, outputs=["report"]).report["input"]["slices"] == 16
    assert sample_value(st, "coviax_results_total", {"code": "RESOURCE_EXHAUSTED"}) is None  # rejected != a job


def test_too_many_concurrent_scans(server, small_series):
    st = server
    st.gated.gate.clear()
    with _client(st) as c:
        # two streams that stall after their header hold both slots
        stall = threading.Event()

        def stalled():
            yield pb.SegmentRequest(header=pb.Header())
            stall.wait(30)

        calls = [pb_grpc.CoviaxStub(c.channel).Segment(stalled(), timeout=60) for _ in range(2)]
        for call in calls:
            next(iter(call))
        with pytest.raises(CoviaxClientError) as err:
            c.segment(small_series, outputs=["report"])
        assert err.value.code == "RESOURCE_EXHAUSTED" and "COVIAX_MAX_CONCURRENT_SCANS" in err.value.message
        for call in calls:
            call.cancel()
        stall.set()
        st.gated.gate.set()
        wait_for(lambda: not st.jobs.slot_holders, what="slots released")
        assert c.segment(small_series, outputs=["report"]).job_id


def test_deadline_is_honoured(server, small_series):
    st = server
    st.gated.gate.clear()
    with _client(st) as c:
        with pytest.raises(CoviaxClientError) as err:
            c.segment(small_series, outputs=["report"], timeout=1.0)
        assert err.value.code == "DEADLINE_EXCEEDED"
        wait_for(lambda: not st.jobs.slot_holders, what="the slot of the expired call released")
        cancelled = c.list_jobs(state="CANCELLED")
        assert cancelled and "deadline" in c.get_job(cancelled[0].job_id).error.message
        st.gated.gate.set()


def test_drain_on_stop_finishes_scans_in_flight_and_refuses_new_ones(tmp_path, small_series):
    engine, _ = tiny_unet_engine(tmp_path)
    gated = GatedEngine(engine)
    with running_server(tmp_path / "data", prebuilt=gated, engine="unet") as st:
        gated.gate.clear()
        with ThreadPoolExecutor(2) as pool, _client(st) as c:
            inflight = pool.submit(c.segment, small_series, outputs=["report"])
            wait_for(lambda: st.jobs.queue.depth > 0, what="a scan in flight")
            stopping = pool.submit(st.call, st.server.stop(drain_seconds=30), 60)
            wait_for(lambda: c.health() == "NOT_SERVING", what="NOT_SERVING while draining")
            with pytest.raises(CoviaxClientError) as err:
                c.segment(small_series, outputs=["report"])
            assert err.value.code == "UNAVAILABLE"
            gated.gate.set()
            assert inflight.result(60).report["input"]["slices"] == 16  # the scan in flight finished
            stopping.result(60)


def test_batch_and_duplicate_uids_with_the_unet(server, small_series, tmp_path, caplog):
    """Batch jobs are decoded from disk at run time; slices whose SOPInstanceUID is not unique are
    predicted again by position (the worker asks for them), so every slice gets its own prediction."""
    import logging
    import shutil

    import pydicom

    dup = tmp_path / "dup"
    shutil.copytree(small_series, dup)
    files = sorted(dup.glob("*.dcm"))
    twin = pydicom.dcmread(files[1])
    twin.SOPInstanceUID = pydicom.dcmread(files[0]).SOPInstanceUID
    twin.save_as(files[1])
    with caplog.at_level(logging.WARNING, logger="coviax.service"), _client(server) as c:
        reference = c.segment(small_series, outputs=["report"])
        streamed_dup = c.segment(dup, outputs=["report"])
        _, events = c.submit_batch([("plain", small_series), ("dup", dup)], outputs=["report"])
        jobs = [c.wait(e.accepted.job_id, timeout=60) for e in events]
    assert all(j.state == pb.DONE for j in jobs)
    values = [streamed_dup.ratios_pct["all"], jobs[0].result.ratios_pct.all, jobs[1].result.ratios_pct.all]
    assert values == pytest.approx([reference.ratios_pct["all"]] * 3)
    assert "slices without a streamed prediction" in caplog.text


class PanicException(BaseException):
    """What pyo3 raises when a Rust decoder (pylibjpeg-rle) panics: a BaseException, not an Exception."""


def test_a_decoder_panic_in_the_server_never_hangs_a_job(server, small_series, monkeypatch):
    """Issue 13 item 1: the streamed decode panics (as a PanicException reaching the server); the job still
    ends (Segment and SubmitBatch) with the 3D read's answer, and the slot is free after."""
    from coviax_service.decoding import DecoderPool

    async def panic(self, fn, *args):
        raise PanicException("called `Result::unwrap()` on an `Err` value")

    monkeypatch.setattr(DecoderPool, "run", panic)  # every streamed decode panics
    with _client(server, timeout=90) as c:
        result = c.segment(small_series, outputs=["report"])  # the 3D read in the worker decodes the slices
        assert result.report["input"]["slices"] == 16
        _, events = c.submit_batch([("p", small_series)], outputs=["report"])
        job = c.wait(events[0].accepted.job_id, timeout=90)
        assert job.state == pb.DONE
    wait_for(lambda: not server.jobs.slot_holders, what="slots released")
