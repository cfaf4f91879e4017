"""The job manager: builds the parts of the job service, starts and stops them, answers queries.

Each responsibility lives in its own module and can be used without a server:
:mod:`.admission` (Header -> job), :mod:`.uploads` (bytes -> disk),
:mod:`.slices` (slices -> the shared slice engine while a scan arrives),
:mod:`.runner` (the 3D step in the worker pool, ending jobs),
:mod:`.scheduler` (slots, waiting jobs, restart), :mod:`.retention`.
This class wires them together for the servicer, which is the only place
that knows gRPC and protobuf.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
import time
from pathlib import Path

import numpy as np

import coviax
from coviax.lesions import SliceEngine, UNetSliceEngine
from coviax.pipeline import OUTPUTS
from coviax_service import worker
from coviax_service.errors import InvalidRequest, NotFound, Unsupported
from coviax_service.inference import InferenceQueue
from coviax_service.jobs.admission import Admission
from coviax_service.jobs.model import JobRecord, JobRequest, JobState, Lifecycle, LiveJob, ServerDescription
from coviax_service.jobs.retention import Retention
from coviax_service.jobs.runner import Runner
from coviax_service.jobs.scheduler import Scheduler, resume
from coviax_service.jobs.slices import SlicePredictor
from coviax_service.jobs.uploads import Uploads
from coviax_service.processes import CappedProcessPool
from coviax_service.store import Store

log = logging.getLogger("coviax.service")

KMEANS_MODEL_CARD = (
    "K-means engine (the thesis's unsupervised method): 8 voxel features (HU, Hessian eigenvalues, Frangi "
    "vesselness at 1/2/4 mm, local mean HU) clustered into vessel / GGO / consolidation per scan. "
    "No training data and no weights. Research use only; not a medical device."
)
#: Largest page_token ListJobs accepts (an offset into the job list).
MAX_PAGE_OFFSET = 10**9


class JobManager:
    def __init__(self, config, metrics, engine=None):
        self.config = config
        self.metrics = metrics
        self.store = Store(config.data_dir)
        self.engine = engine  # a prebuilt engine (tests); built in start() otherwise
        self.slice_engine: SliceEngine | None = None
        self.queue: InferenceQueue | None = None
        self.pool: CappedProcessPool | None = None
        self.live: dict[str, LiveJob] = {}
        self.lifecycle = Lifecycle()
        self.model_info: ServerDescription | None = None
        self.scheduler = Scheduler(config, metrics, self.lifecycle, self.live)
        self.predictor = SlicePredictor(config, self.store, self.scheduler) if config.engine == "unet" else None
        self.retention = Retention(config, self.store)
        self.runner = Runner(config, self.store, metrics, self.scheduler, self.lifecycle, self.live,
                             predictor=self.predictor, on_done=self._after_done)
        self.admission = Admission(config, self.store, metrics, self.scheduler, self.lifecycle, self.live,
                                   self._engine_facts)
        self.uploads = Uploads(config, self.store, metrics, self.scheduler, self.predictor, self.runner.start)
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()
        self._progress_queue = None
        self._progress_thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- the server's phase and slots, as the server and the tests see them

    ready = property(lambda self: self.lifecycle.ready, lambda self, v: setattr(self.lifecycle, "ready", v))
    draining = property(lambda self: self.lifecycle.draining, lambda self, v: setattr(self.lifecycle, "draining", v))
    closing = property(lambda self: self.lifecycle.closing, lambda self, v: setattr(self.lifecycle, "closing", v))

    @property
    def slot_holders(self) -> set[str]:
        return self.scheduler.holders

    # ================================================================ start / stop

    def spawn(self, coro) -> asyncio.Task:
        """A background task that is kept referenced until it ends (the loop holds tasks weakly)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def open_store(self) -> None:
        self.store.open()

    async def start(self) -> None:
        """Build and warm up the engine and the workers, then resume the jobs left by the last run."""
        self._loop = asyncio.get_running_loop()
        self._progress_queue = multiprocessing.get_context("spawn").SimpleQueue()
        self.pool = CappedProcessPool("worker", self.config.workers, int(self.config.worker_memory_gb * 1024**3),
                                      initializer=worker.init_worker, initargs=(self._progress_queue,))
        self.pool.start()
        self.runner.pool = self.pool
        self._progress_thread = threading.Thread(target=self._read_progress, name="coviax-progress", daemon=True)
        self._progress_thread.start()
        if self.engine is None:
            self.engine = await asyncio.to_thread(self._build_engine)
        if self.predictor is not None:
            self.slice_engine = UNetSliceEngine(self.engine)
            self.predictor.decoder.start()
        else:
            self.runner.engine = self.engine
        self.queue = InferenceQueue(self.slice_engine, self.config.batch_slices, on_batch=self._on_batch)
        self.scheduler.queue = self.queue
        self.queue.start()
        await self._warm_up()
        self.model_info = self._describe()
        self.metrics.model_info.info({
            "engine": self.model_info.engine, "model": self.model_info.model,
            "weights_sha256": self.model_info.weights_sha256, "device": self.model_info.device,
            "version": coviax.__version__,
        })
        await resume(self.store, self.scheduler)
        self._tasks.append(asyncio.create_task(self.scheduler.dispatch(self.runner.run), name="coviax-dispatch"))
        self._tasks.append(asyncio.create_task(self.retention.loop(), name="coviax-retention"))
        self.lifecycle.ready = True
        self.scheduler.wakeup.set()

    def _build_engine(self):
        from coviax.lesions import make_engine

        if self.config.engine == "unet":
            from coviax.lesions.unet import UNetEngine

            return UNetEngine.from_checkpoint(self.config.weights, device=self.config.device,
                                              batch_size=self.config.batch_slices)
        if self.config.device.startswith("cuda"):  # the workers' lungmask would use it: check now, not per scan
            from coviax.lesions.unet import check_device

            check_device(self.config.device)
        return make_engine(self.config.engine)

    async def _warm_up(self) -> None:
        loop = asyncio.get_running_loop()
        futures = [loop.run_in_executor(self.pool.executor, worker.warm_up, None if self.slice_engine else self.engine)
                   for _ in range(self.config.workers)]
        if self.slice_engine is not None:
            await self.queue.run_now(np.full((1, 512, 512), -1000, dtype=np.int16))
            await self.predictor.decoder.warm_up()
        await asyncio.gather(*futures)

    def _describe(self) -> ServerDescription:
        from coviax.lungs import available_methods

        lung_methods = available_methods()
        if self.slice_engine is not None:
            info = self.slice_engine.model_info()
            engine, model, weights_sha, card, device = "unet", info.model, info.weights_sha256, info.card, info.device
        else:
            engine, model, weights_sha, card = self.config.engine, "kmeans:unsupervised", "", KMEANS_MODEL_CARD
            device = self.config.device
        c = self.config
        return ServerDescription(
            engine=engine, model=model, weights_sha256=weights_sha, device=device, default_lungs=c.lungs,
            lung_methods=lung_methods, model_card=card, software_version=coviax.__version__,
            max_concurrent_scans=c.max_concurrent_scans, max_queued_slices=c.max_queued_slices,
            max_scan_bytes=c.max_scan_bytes, max_slices=c.max_slices, max_chunk_bytes=c.max_chunk_bytes,
            notice=coviax.RESEARCH_USE_NOTICE, outputs=tuple(OUTPUTS),
        )

    def _engine_facts(self) -> tuple[str, str, tuple[str, ...]]:
        """(device, model id, model notes) of the running engine, for the jobs' options."""
        notes = self.slice_engine.model_info().notes if self.slice_engine is not None else ()
        return self.model_info.device, self.model_info.model, notes

    async def drain(self, timeout: float) -> None:
        """Stop admitting scans and wait (at most ``timeout`` s) for the scans in flight to finish."""
        self.lifecycle.draining = True
        deadline = time.monotonic() + timeout
        while self.slot_holders and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self.slot_holders:
            log.warning("drain: %d scan(s) still in flight after %.0f s; they resume at the next start",
                        len(self.slot_holders), timeout)

    async def close(self) -> None:
        """Stop everything now. Rows stay as they are: the next start resumes or fails them."""
        self.lifecycle.closing = True
        for task in self._tasks:
            task.cancel()
        for job in list(self.live.values()):
            for t in list(job.pending):
                t.cancel()
            if job.task is not None:
                job.task.cancel()
            if job.upload.open_file is not None:
                job.upload.open_file.close()
        await asyncio.sleep(0)
        if self.queue is not None:
            await self.queue.stop()
        if self.pool is not None:
            self.pool.close()
        if self.predictor is not None:
            self.predictor.decoder.close()
        if self._progress_queue is not None:
            self._progress_queue.put(None)
            if self._progress_thread is not None:
                self._progress_thread.join(timeout=2)
        self.store.close()

    # ================================================================ jobs

    async def admit(self, request: JobRequest, streaming: bool, batch_id: str = "") -> tuple[LiveJob | dict, bool]:
        return await self.admission.admit(request, streaming, batch_id)

    async def receive_chunk(self, job: LiveJob, chunk) -> None:
        await self.uploads.receive_chunk(job, chunk)

    async def receive_raw(self, job: LiveJob, raw) -> None:
        await self.uploads.receive_raw(job, raw)

    async def complete_upload(self, job: LiveJob) -> None:
        await self.uploads.complete(job)

    async def fail(self, job: LiveJob, exc: BaseException) -> None:
        await self.runner.fail(job, exc)

    async def on_stream_gone(self, job: LiveJob, reason: str) -> None:
        """The client's stream ended before the result (client cancel, deadline, network)."""
        if job.terminal:
            return
        if self.lifecycle.closing and job.upload_complete:
            return  # shutting down: the job is on disk and resumes at the next start
        try:
            await self.runner.cancel(job, reason)
        except Exception:
            log.exception("job %s: cleaning up after the stream ended failed", job.job_id)

    async def cancel_by_id(self, job_id: str, tenant: str = "") -> JobRecord:
        await self._row_of(job_id, tenant)
        job = self.live.get(job_id)
        if job is not None and not job.terminal:
            await self.runner.cancel(job, "cancelled by CancelJob")
            self.scheduler.forget(job_id)
        return await self.get_job(job_id, tenant)

    def _after_done(self) -> None:
        if self.config.retention_max_bytes:
            self.spawn(self.retention.run_pass())

    # ================================================================ progress from the workers

    def _read_progress(self) -> None:
        """Thread: stage events from the workers -> the event loop."""
        while True:
            item = self._progress_queue.get()
            if item is None:
                return
            try:
                self._loop.call_soon_threadsafe(self._on_stage, *item)
            except RuntimeError:  # the loop is closed
                return

    def _on_stage(self, job_id: str, stage: str, state: str) -> None:
        job = self.live.get(job_id)
        if job is None or job.terminal:
            return
        if state == "start":
            job.stage = stage
        elif stage == "lesions" and self.slice_engine is None:
            job.segmented = job.received
        else:
            return
        job.emit_progress()

    def _on_batch(self, n: int, seconds: float) -> None:
        self.metrics.slices.inc(n)
        self.metrics.stage_seconds.labels(stage="inference").observe(seconds)
        self.scheduler.update_depth()

    # ================================================================ queries

    async def stored(self, job_id: str) -> dict | None:
        return await self.store.call(self.store.get, job_id)

    async def _row_of(self, job_id: str, tenant: str) -> dict:
        """The row of a job of ``tenant``; NOT_FOUND for another tenant's job, as for a job that does not exist."""
        row = await self.store.call(self.store.get, job_id)
        if row is None or row["tenant"] != tenant:
            raise NotFound(f"no job {job_id!r} on this server")
        return row

    async def get_job(self, job_id: str, tenant: str = "", with_result: bool = True) -> JobRecord:
        row = await self._row_of(job_id, tenant)
        artifacts = await self.store.call(self.store.artifacts, job_id) if with_result else None
        return JobRecord(row, self.live.get(job_id), artifacts)

    async def artifacts(self, job_id: str) -> list[dict]:
        return await self.store.call(self.store.artifacts, job_id)

    async def list_jobs(self, batch_id: str, state: str, page_size: int, token: str,
                        tenant: str = "") -> tuple[list[JobRecord], str]:
        """A page of jobs, newest first, and the token of the next page ("" after the last)."""
        if state and state not in JobState.__members__:
            raise InvalidRequest(f"state {state!r} is not a job state; use one of {', '.join(JobState)}")
        if token and not (token.isascii() and token.isdigit() and int(token) <= MAX_PAGE_OFFSET):
            raise InvalidRequest(f"page_token {token[:40]!r} is not one this server gave")
        offset = int(token) if token else 0
        limit = min(page_size or 100, 1000)
        rows = await self.store.call(lambda: self.store.list(batch_id, state, limit + 1, offset, tenant))
        more = len(rows) > limit
        records = [JobRecord(r, self.live.get(r["job_id"])) for r in rows[:limit]]
        return records, str(offset + limit) if more else ""

    async def artifact_file(self, job_id: str, name: str, tenant: str = "") -> tuple[Path, dict]:
        row = await self._row_of(job_id, tenant)
        if row["state"] != JobState.DONE:
            raise Unsupported(f"job {job_id} is {row['state']}; artifacts exist once it is DONE")
        if row["artifacts_expired"]:
            raise NotFound(f"the artifacts of job {job_id} were removed by the retention policy "
                           f"(COVIAX_RETENTION_DAYS={self.config.retention_days:g}, "
                           f"COVIAX_RETENTION_MAX_BYTES={self.config.retention_max_bytes})")
        for a in await self.store.call(self.store.artifacts, job_id):
            if a["name"] == name or a["file_name"] == name:
                path = self.config.data_dir / a["path"]
                if not path.is_file():
                    raise NotFound(f"artifact {name!r} of job {job_id} is missing on disk")
                return path, a
        raise NotFound(f"job {job_id} has no artifact {name!r}")
