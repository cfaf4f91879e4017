"""The job service's parts without a gRPC server: options, admission, ending jobs, retention, decoding.

Each test drives one module of ``coviax_service.jobs`` with a real SQLite store in a temporary folder
(and no engine, worker pool or network), as the package is meant to be used.
"""

from __future__ import annotations

import asyncio
import errno
import json
import sqlite3
from pathlib import Path

import pytest

pytest.importorskip("grpc")

from coviax.errors import OptionError  # noqa: E402
from coviax_service.config import ServiceConfig  # noqa: E402
from coviax_service.errors import LimitExceeded, classify  # noqa: E402
from coviax_service.jobs.admission import Admission  # noqa: E402
from coviax_service.jobs.model import JobOptions, JobRequest, JobState, Lifecycle, LiveJob  # noqa: E402
from coviax_service.jobs.retention import Retention  # noqa: E402
from coviax_service.jobs.runner import Runner  # noqa: E402
from coviax_service.jobs.scheduler import Scheduler  # noqa: E402
from coviax_service.metrics import Metrics  # noqa: E402
from coviax_service.store import Store  # noqa: E402


class PanicException(BaseException):
    """What pyo3 raises when a Rust decoder panics: a BaseException, not an Exception."""


class Parts:
    """Admission, scheduler and runner on one store, as JobManager wires them (no engine, no pool)."""

    def __init__(self, data_dir: Path, **config):
        self.config = ServiceConfig(data_dir=data_dir, engine="kmeans", lungs="classical", metrics_port=0,
                                    **config)
        self.store = Store(data_dir)
        self.store.open()
        self.metrics = Metrics()
        self.lifecycle = Lifecycle(ready=True)
        self.live: dict[str, LiveJob] = {}
        self.scheduler = Scheduler(self.config, self.metrics, self.lifecycle, self.live)
        self.admission = Admission(self.config, self.store, self.metrics, self.scheduler, self.lifecycle, self.live,
                                   lambda: ("cpu", "kmeans:unsupervised", ()))
        self.runner = Runner(self.config, self.store, self.metrics, self.scheduler, self.lifecycle, self.live)

    def rows(self) -> list[dict]:
        return self.store.call_sync(lambda: self.store.list(limit=1000))

    def close(self):
        self.store.close()


@pytest.fixture()
def parts(tmp_path):
    p = Parts(tmp_path / "data", max_concurrent_scans=4)
    yield p
    p.close()


def _options(**kw) -> JobOptions:
    return JobOptions.resolve(JobRequest(**kw), engine="kmeans", lungs="classical", device="cpu",
                              model="kmeans:unsupervised")


# ------------------------------------------------------------------ model


def test_job_options_take_the_cores_defaults_and_checks():
    from coviax.pipeline import OUTPUTS, SegmentOptions

    o = _options()
    assert (o.lungs, o.max_blobs, o.outputs) == ("classical", SegmentOptions.max_blobs, OUTPUTS)
    assert JobOptions.from_dict(json.loads(json.dumps(o.to_dict()))) == o
    assert _options(max_blobs=0, outputs=("report",), lungs="auto").segment_options().outputs == ("report",)
    with pytest.raises(OptionError, match="unknown lung method 'lobes'"):
        _options(lungs="lobes")
    with pytest.raises(OptionError, match=r"unknown outputs \['gif'\]"):
        _options(outputs=("report", "gif"))
    with pytest.raises(OptionError, match="max_blobs 1001 outside 0..1000"):
        _options(max_blobs=1001)


def test_job_states_are_the_api_names():
    from coviax_api.coviax.v1 import coviax_pb2 as pb

    assert [s.value for s in JobState] == [pb.JobState.Name(v) for v in sorted(pb.JobState.values()) if v]
    assert {s for s in JobState if s.terminal} == {JobState.DONE, JobState.FAILED, JobState.CANCELLED}


# ------------------------------------------------------------------ admission (issue 13, item 3)


def test_concurrent_headers_cannot_overbook_slots_or_leave_rows_receiving(parts):
    """16 Headers at once for 4 slots: 4 jobs, 12 RESOURCE_EXHAUSTED, no stray RECEIVING row; retries work."""
    slow_create = parts.store.create_job

    def create_job(row):  # the row write takes long enough for every Header to be in flight at once
        import time

        time.sleep(0.02)
        return slow_create(row)

    parts.store.create_job = create_job

    async def main():
        results = await asyncio.gather(*(parts.admission.admit(JobRequest(idempotency_key=f"key-{i}"), streaming=True)
                                         for i in range(16)), return_exceptions=True)
        admitted = [r[0] for r in results if not isinstance(r, BaseException)]
        refused = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
        assert len(admitted) == 4 and len(parts.scheduler.holders) == 4 and parts.scheduler.reserved == 0
        assert all(isinstance(results[i], LimitExceeded) for i in refused)
        rows = parts.rows()
        assert sorted(r["job_id"] for r in rows if r["state"] == "RECEIVING") == sorted(j.job_id for j in admitted)
        # a slot frees up: a refused scan retried with its idempotency key becomes a job
        await parts.runner.cancel(admitted[0], "test")
        job, existing = await parts.admission.admit(JobRequest(idempotency_key=f"key-{refused[0]}"), streaming=True)
        assert not existing and job.job_id in parts.scheduler.holders

    asyncio.run(main())


def test_a_row_refused_after_it_was_written_is_failed_and_its_key_reusable(parts, monkeypatch):
    """The disk fills between the row and the upload folder: the row is FAILED, not RECEIVING; the key works again."""
    real_mkdir = Path.mkdir

    def full_disk(self, *args, **kwargs):
        if self.name == "input":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_mkdir(self, *args, **kwargs)

    async def main():
        monkeypatch.setattr(Path, "mkdir", full_disk)
        with pytest.raises(OSError) as info:
            await parts.admission.admit(JobRequest(idempotency_key="k"), streaming=True)
        monkeypatch.undo()
        assert classify(info.value)[0] == "RESOURCE_EXHAUSTED"
        [row] = parts.rows()
        assert (row["state"], row["error_code"]) == ("FAILED", "RESOURCE_EXHAUSTED")
        assert not parts.scheduler.holders and parts.scheduler.reserved == 0
        job, existing = await parts.admission.admit(JobRequest(idempotency_key="k"), streaming=True)
        assert not existing and job.job_id != row["job_id"]

    asyncio.run(main())


# ------------------------------------------------------------------ ending jobs (issue 13, items 1 and 3)


def test_on_a_full_disk_the_upload_is_deleted_before_the_failed_row_is_written(parts):
    async def main():
        job, _ = await parts.admission.admit(JobRequest(idempotency_key="full"), streaming=True)
        upload = parts.store.job_dir(job.job_id) / "input" / "instance-00000.dcm"
        upload.write_bytes(b"\0" * 4096)
        update = parts.store.update

        def update_on_a_full_disk(job_id, **fields):  # SQLite can write only once the upload is gone
            if upload.exists():
                raise sqlite3.OperationalError("database or disk is full")
            return update(job_id, **fields)

        parts.store.update = update_on_a_full_disk
        await parts.runner.fail(job, OSError(errno.ENOSPC, "No space left on device"))
        row = parts.store.call_sync(parts.store.get, job.job_id)
        assert (row["state"], row["error_code"]) == ("FAILED", "RESOURCE_EXHAUSTED")
        assert "disk is full" in row["error_message"] and not parts.store.job_dir(job.job_id).exists()
        assert not parts.scheduler.holders

    asyncio.run(main())


def test_a_panic_while_a_job_runs_fails_the_job_and_frees_its_slot(parts):
    class PanickingPredictor:
        async def predictions(self, job):
            raise PanicException("called `Option::unwrap()` on a `None` value")

    parts.runner.predictor = PanickingPredictor()

    async def main():
        job, _ = await parts.admission.admit(JobRequest(), streaming=True)
        events = job.subscribe()
        await asyncio.wait_for(parts.runner.run(job), 10)
        row = parts.store.call_sync(parts.store.get, job.job_id)
        assert (row["state"], row["error_code"]) == ("FAILED", "INTERNAL")
        assert "PanicException" not in row["error_message"] and "reference" in row["error_message"]
        assert not parts.scheduler.holders and job.job_id not in parts.live
        kinds = []
        while not events.empty():
            kinds.append(events.get_nowait()[0])
        assert kinds[-1] == "error"

    asyncio.run(main())


def test_decode_instance_survives_a_decoder_panic(tmp_path, monkeypatch):
    import pydicom

    from coviax_service.decoding import decode_instance
    from service_support import make_small_series

    path = sorted(make_small_series(tmp_path / "s", n=2).glob("*.dcm"))[0]
    key, hu = decode_instance(path)
    assert hu.shape == (128, 128) and key

    def panic(self):
        raise PanicException("rle decoder panicked")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(panic))
    assert decode_instance(path) is None  # the 3D read names the defect; the thread does not die


def test_disk_full_and_panics_map_to_codes_without_class_names():
    assert classify(OSError(errno.ENOSPC, "No space left on device"))[0] == "RESOURCE_EXHAUSTED"
    code, message = classify(PanicException("boom"))
    assert code == "INTERNAL" and "PanicException" not in message and "boom" not in message


# ------------------------------------------------------------------ retention


def test_retention_picks_old_jobs_then_oldest_over_the_byte_limit(tmp_path):
    config = ServiceConfig(data_dir=tmp_path, retention_days=7, retention_max_bytes=250)
    now = 1_000_000_000.0
    rows = [{"job_id": "a", "finished": now - 8 * 86400, "bytes": 100},
            {"job_id": "b", "finished": now - 2 * 86400, "bytes": 100},
            {"job_id": "c", "finished": now - 1 * 86400, "bytes": 100},
            {"job_id": "d", "finished": now - 60, "bytes": 100}]
    assert [r["job_id"] for r in Retention(config, None).select(rows, now)] == ["a", "b"]
    config.retention_max_bytes = 0
    assert [r["job_id"] for r in Retention(config, None).select(rows, now)] == ["a"]


# ------------------------------------------------------------------ workers (issue 13, item 6)

_SERVER_WITH_A_POOL = """
import multiprocessing, os, sys, time
from coviax_service import worker
from coviax_service.processes import CappedProcessPool

if __name__ == "__main__":
    pool = CappedProcessPool("worker", 2, 8 * 1024**3, worker.init_worker,
                             (multiprocessing.get_context("spawn").SimpleQueue(),))
    pool.start()
    pids = {f.result() for f in [pool.submit(os.getpid) for _ in range(8)]}
    print(" ".join(str(p) for p in sorted(pids)), flush=True)
    time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # a zombie has exited
    except FileNotFoundError:
        return False


def _children(pid: int) -> list[int]:
    import os

    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass
    return found


def test_pool_workers_exit_when_the_server_is_killed(tmp_path):
    """Workers and multiprocessing's resource tracker end within seconds of a SIGKILL of the server."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "server.py"
    script.write_text(_SERVER_WITH_A_POOL)
    server = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in server.stdout.readline().split()]
        assert workers and all(_alive(p) for p in workers)
        workers = sorted(set(workers) | set(_children(server.pid)))  # the resource tracker too
        os.kill(server.pid, signal.SIGKILL)
        server.wait(10)
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [p for p in workers if _alive(p)]
        for p in left:  # do not leave them behind when the test fails
            os.kill(p, signal.SIGKILL)
        assert not left, "processes of the pool outlived the SIGKILLed server"
    finally:
        if server.poll() is None:
            server.kill()


def test_a_database_from_before_tenants_is_migrated(tmp_path):
    """Jobs stored before tenants existed belong to the tenant "" (the one of tokens without a tenant)."""
    import sqlite3 as sq

    data = tmp_path / "data"
    data.mkdir()
    conn = sq.connect(data / "coviax.db")
    conn.executescript("""
        CREATE TABLE jobs (job_id TEXT PRIMARY KEY, state TEXT NOT NULL, created REAL NOT NULL, updated REAL NOT NULL,
            finished REAL, idempotency_key TEXT UNIQUE, batch_id TEXT NOT NULL DEFAULT '', client_ref TEXT NOT NULL
            DEFAULT '', options TEXT NOT NULL, upload_complete INTEGER NOT NULL DEFAULT 0, instances INTEGER NOT NULL
            DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0, expected INTEGER NOT NULL DEFAULT 0, error_code TEXT NOT NULL
            DEFAULT '', error_message TEXT NOT NULL DEFAULT '', report TEXT, artifacts_expired INTEGER NOT NULL
            DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0);
        INSERT INTO jobs (job_id, state, created, updated, options) VALUES ('old', 'DONE', 1, 1, '{}');
    """)
    conn.commit()
    conn.close()
    store = Store(data)
    store.open()
    try:
        assert [r["job_id"] for r in store.call_sync(lambda: store.list(tenant=""))] == ["old"]
        assert not store.call_sync(lambda: store.list(tenant="hospital-a"))
    finally:
        store.close()


def test_an_idempotency_key_is_per_tenant(parts):
    async def main():
        a, _ = await parts.admission.admit(JobRequest(idempotency_key="k", tenant="a"), streaming=False)
        b, existing = await parts.admission.admit(JobRequest(idempotency_key="k", tenant="b"), streaming=False)
        assert not existing and a.job_id != b.job_id
        again, existing = await parts.admission.admit(JobRequest(idempotency_key="k", tenant="a"), streaming=False)
        assert existing and again.job_id == a.job_id

    asyncio.run(main())


# ------------------------------------------------------------------ decoder processes (issue 13, item 2)


def test_a_decoder_process_over_its_memory_limit_fails_alone(tmp_path):
    """A decode that asks for more than the limit fails with MemoryError in its process; one that kills its
    process rebuilds the pool; the server's own memory does not grow; a real instance still decodes."""
    import os
    import resource

    from coviax_service.decoding import DecoderPool
    from service_support import make_small_series

    path = sorted(make_small_series(tmp_path / "s", n=2).glob("*.dcm"))[0]
    pool = DecoderPool(processes=1, memory_bytes=1024**3)
    pool.start()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    async def main():
        with pytest.raises(MemoryError):
            await pool.run(bytearray, 3 * 1024**3)  # 3 GiB asked for in a 1 GiB process
        from concurrent.futures.process import BrokenProcessPool

        with pytest.raises(BrokenProcessPool):
            await pool.run(os._exit, 3)  # a decoder that takes its process down
        key, hu = await pool.decode(path)
        assert hu.shape == (128, 128) and key
        assert await pool.decode(tmp_path / "missing.dcm") is None

    try:
        asyncio.run(main())
    finally:
        pool.close()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 256 * 1024  # KiB: not the 3 GiB


# ------------------------------------------------------------------ a cancel during a step (the soak's double count)


@pytest.mark.parametrize("during", ["fsync", "row"])
def test_a_job_cancelled_while_its_upload_completes_stays_cancelled_and_counts_once(parts, during):
    """CancelJob (or the client's deadline) while the upload's fsync or its QUEUED row write is in flight.

    Before the fix the upload step carried on: it set the job QUEUED and started it, the job ran to DONE,
    and coviax_results_total counted it CANCELLED and OK (the soak's CANCELLED 107 against 106 rows).
    """
    import threading

    from coviax_service.errors import JobCancelled
    from coviax_service.jobs.uploads import Uploads

    started: list[LiveJob] = []
    uploads = Uploads(parts.config, parts.store, parts.metrics, parts.scheduler, None, started.append)
    in_step, release = threading.Event(), threading.Event()

    def blocking(real):
        def step(*args, **kwargs):
            in_step.set()
            release.wait(10)
            return real(*args, **kwargs)
        return step

    if during == "fsync":
        uploads._fsync_input = blocking(uploads._fsync_input)
    else:
        parts.store.update = blocking(parts.store.update)

    def counted(code: str) -> float:
        return parts.metrics.results.labels(code=code)._value.get()

    async def main():
        job, _ = await parts.admission.admit(JobRequest(idempotency_key="cancel-me"), streaming=True)
        uploads.instance_path(job.job_id, 0).write_bytes(b"\0" * 128)
        job.received, job.upload.kind = 1, "dicom"
        complete = asyncio.ensure_future(uploads.complete(job))
        await asyncio.to_thread(in_step.wait, 10)
        cancel = asyncio.ensure_future(parts.runner.cancel(job, "cancelled by CancelJob"))
        await asyncio.sleep(0.05)
        release.set()
        with pytest.raises(JobCancelled):
            await complete
        await cancel
        assert job.state == JobState.CANCELLED and not started
        row = parts.store.call_sync(parts.store.get, job.job_id)
        assert (row["state"], row["error_code"]) == ("CANCELLED", "CANCELLED")
        assert (counted("CANCELLED"), counted("OK")) == (1.0, 0.0)
        assert not parts.scheduler.holders

    asyncio.run(main())


def test_a_client_gone_while_its_row_is_written_leaves_no_receiving_row(parts):
    """The Header's handler is cancelled during the row's insert: the row ends FAILED (CANCELLED), counted once."""
    import threading

    insert = parts.store.create_job
    in_insert, release = threading.Event(), threading.Event()

    def slow_insert(row):
        in_insert.set()
        release.wait(10)
        return insert(row)

    parts.store.create_job = slow_insert

    async def main():
        admit = asyncio.ensure_future(parts.admission.admit(JobRequest(idempotency_key="gone"), streaming=True))
        await asyncio.to_thread(in_insert.wait, 10)
        admit.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await admit
        [row] = parts.rows()
        assert (row["state"], row["error_code"]) == ("FAILED", "CANCELLED")
        assert parts.metrics.results.labels(code="CANCELLED")._value.get() == 1.0
        assert not parts.scheduler.holders and parts.scheduler.reserved == 0 and not parts.live

    asyncio.run(main())


# ------------------------------------------------------------------ 3D workers: memory cap, a dying worker (item 2)


def test_a_worker_over_its_memory_cap_fails_its_work_and_a_dead_worker_is_replaced():
    """The 3D workers' pool: an allocation past COVIAX_WORKER_MEMORY_GB is a MemoryError in the worker
    (RESOURCE_EXHAUSTED), a worker that dies breaks the executor, which is replaced once; work goes on."""
    import os
    from concurrent.futures.process import BrokenProcessPool

    from coviax_service import worker
    from coviax_service.processes import CappedProcessPool

    pool = CappedProcessPool("worker", 1, 2 * 1024**3, worker.init_worker, (None,))
    pool.start()
    try:
        big = pool.submit(bytearray, 4 * 1024**3)  # 4 GiB asked for in a 2 GiB worker
        with pytest.raises(MemoryError) as info:
            big.result(60)
        assert classify(info.value)[0] == "RESOURCE_EXHAUSTED"
        first = pool.pids()
        dying = pool.submit(os._exit, 9)
        with pytest.raises(BrokenProcessPool):
            dying.result(60)
        pool.replace(dying.executor)
        pool.replace(dying.executor)  # a second caller that saw the same break starts nothing more
        assert pool.replaced == 1
        assert pool.submit(os.getpid).result(60) not in first
    finally:
        pool.close()


class _DyingPool:
    """A worker pool whose first ``deaths`` submissions break (a worker died), then the work succeeds."""

    memory_bytes = 8 * 1024**3

    def __init__(self, deaths: int):
        self.deaths, self.replaced, self.executor = deaths, 0, object()

    def submit(self, fn, *args):
        from concurrent.futures import Future
        from concurrent.futures.process import BrokenProcessPool

        future = Future()
        future.executor = self.executor
        if self.deaths:
            self.deaths -= 1
            future.set_exception(BrokenProcessPool("A process in the process pool was terminated abruptly"))
        else:
            future.set_result({"report": {"vr_all": 0.0}, "artifacts": []})
        return future

    def replace(self, broken):
        if broken is self.executor:
            self.replaced, self.executor = self.replaced + 1, object()


@pytest.mark.parametrize("deaths, state, code", [(1, "DONE", ""), (2, "FAILED", "RESOURCE_EXHAUSTED")])
def test_a_job_whose_worker_died_is_tried_once_more(parts, deaths, state, code):
    """Another scan's worker death takes every job of the executor with it: each gets one more try on new
    workers. A scan whose worker dies twice ends RESOURCE_EXHAUSTED naming the cap; the slot is freed."""

    class NoPredictions:
        async def predictions(self, job):
            return {}

    parts.runner.predictor = NoPredictions()
    parts.runner.pool = pool = _DyingPool(deaths)

    async def main():
        job, _ = await parts.admission.admit(JobRequest(), streaming=True)
        await asyncio.wait_for(parts.runner.run(job), 10)
        row = parts.store.call_sync(parts.store.get, job.job_id)
        assert (row["state"], row["error_code"]) == (state, code)
        if code:
            assert "died twice" in row["error_message"] and "COVIAX_WORKER_MEMORY_GB" in row["error_message"]
        assert pool.replaced == deaths and not parts.scheduler.holders

    asyncio.run(main())
