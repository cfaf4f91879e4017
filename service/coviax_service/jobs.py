"""Jobs: admission and limits, uploads to disk, the shared engine, the worker pool, resume, retention.

Life of a job::

    RECEIVING --(upload complete, fsync'ed)--> QUEUED --(slot)--> RUNNING --> DONE | FAILED
         \\__________________ CANCELLED (CancelJob, client gone) ___________/

A Segment stream takes a *slot* (``max_concurrent_scans``) when its Header is
admitted and keeps it until the job ends, so that the U-Net can segment each
instance while the rest still arrives. SubmitBatch scans and jobs resumed after
a restart wait in QUEUED (on disk) and a dispatcher gives them free slots.

For the U-Net every received instance is decoded (in a thread) and its slice
queued to the shared :class:`~coviax_service.inference.InferenceQueue`; only
the 3D part (lungs, merge, quantities, exports) waits for the last instance,
and runs in the worker pool. The K-means engine is 3D: the whole job runs in
the pool after the last instance.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import multiprocessing
import os
import shutil
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

import coviax
from coviax.errors import CoviaxError
from coviax.pipeline import OUTPUTS
from coviax_api.coviax.v1 import coviax_pb2 as pb
from coviax_service import worker
from coviax_service.config import ServiceConfig
from coviax_service.convert import artifact_refs, job_message, result_from_report
from coviax_service.errors import (
    JobCancelled,
    ServiceError,
    exhausted,
    invalid,
    not_found,
    precondition,
    to_status,
    unavailable,
)
from coviax_service.inference import InferenceQueue
from coviax_service.metrics import Metrics
from coviax_service.store import Store, fsync_path, replaceable

log = logging.getLogger("coviax.service")

RETENTION_INTERVAL_S = 600.0
KMEANS_MODEL_CARD = (
    "K-means engine (the thesis's unsupervised method): 8 voxel features (HU, Hessian eigenvalues, Frangi "
    "vesselness at 1/2/4 mm, local mean HU) clustered into vessel / GGO / consolidation per scan. "
    "No training data and no weights. Research use only; not a medical device."
)


@dataclass
class LiveJob:
    """A job this process is working on (its row is in the store too)."""

    job_id: str
    options: dict
    batch_id: str = ""
    client_ref: str = ""
    expected: int = 0
    streaming: bool = False
    state: str = "RECEIVING"
    stage: str = "upload"
    kind: str = ""  # "dicom" | "raw"
    received: int = 0
    bytes: int = 0
    segmented: int = 0
    error_code: str = ""
    error_message: str = ""
    started: float = field(default_factory=time.perf_counter)
    upload_complete: bool = False
    # upload state
    open_index: int | None = None
    open_file: object | None = None
    done_indices: set = field(default_factory=set)
    raw_geometry: dict | None = None
    # U-Net predictions, keyed by SOPInstanceUID (or "z:INDEX")
    predictions: dict = field(default_factory=dict)
    ambiguous: set = field(default_factory=set)
    pending: set = field(default_factory=set)
    # bookkeeping
    subscribers: list = field(default_factory=list)
    holds_slot: bool = False
    extra: int = 0
    task: asyncio.Task | None = None
    worker_future: object | None = None
    attempt: int = 0

    @property
    def terminal(self) -> bool:
        return self.state in ("DONE", "FAILED", "CANCELLED")


class JobManager:
    def __init__(self, config: ServiceConfig, metrics: Metrics, engine=None):
        self.config = config
        self.metrics = metrics
        self.store = Store(config.data_dir)
        self.engine = engine  # a prebuilt engine (tests); built in start() otherwise
        self.queue: InferenceQueue | None = None
        self.pool: ProcessPoolExecutor | None = None
        self.live: dict[str, LiveJob] = {}
        self.slot_holders: set[str] = set()
        self.pending: collections.deque[str] = collections.deque()
        self.ready = False
        self.draining = False
        self.closing = False
        self.model_info = pb.ModelInfo()
        self._dispatch_wakeup: asyncio.Event | None = None
        self._tasks: list[asyncio.Task] = []
        self._background: set[asyncio.Task] = set()
        self._progress_queue = None
        self._progress_thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

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
        self._dispatch_wakeup = asyncio.Event()
        ctx = multiprocessing.get_context("spawn")
        self._progress_queue = ctx.SimpleQueue()
        self.pool = ProcessPoolExecutor(
            max_workers=self.config.workers, mp_context=ctx, initializer=worker.init_worker,
            initargs=(self._progress_queue,),
        )
        self._progress_thread = threading.Thread(target=self._read_progress, name="coviax-progress", daemon=True)
        self._progress_thread.start()
        if self.engine is None:
            self.engine = await asyncio.to_thread(self._build_engine)
        self.queue = InferenceQueue(self.engine, self.config.batch_slices, on_batch=self._on_batch)
        self.queue.start()
        await self._warm_up()
        self._describe_model()
        await self._resume()
        self._tasks.append(asyncio.create_task(self._dispatch(), name="coviax-dispatch"))
        self._tasks.append(asyncio.create_task(self._retention_loop(), name="coviax-retention"))
        self.ready = True
        self._dispatch_wakeup.set()

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

    @property
    def slice_engine(self) -> bool:
        """True for engines that segment slice by slice (the U-Net): they stream."""
        return hasattr(self.engine, "predict_slices")

    async def _warm_up(self) -> None:
        loop = asyncio.get_running_loop()
        futures = [loop.run_in_executor(self.pool, worker.warm_up, None if self.slice_engine else self.engine)
                   for _ in range(self.config.workers)]
        if self.slice_engine:
            await self.queue.run_now(np.full((1, 512, 512), -1000, dtype=np.int16))
        await asyncio.gather(*futures)

    def _describe_model(self) -> None:
        from coviax.lungs import lungmask_adapter

        lung_methods = ["auto", "classical"] + (["lungmask"] if lungmask_adapter.find_weights("R231") else [])
        weights_sha, card, model = "", KMEANS_MODEL_CARD, "kmeans:unsupervised"
        if self.slice_engine:
            model = getattr(self.engine, "model_id", "unet")
            weights_sha = getattr(self.engine, "weights_sha256", "") or ""
            path = getattr(self.engine, "weights_path", None)
            if not weights_sha and path is not None:
                from coviax.lesions.unet_model import file_sha256

                weights_sha = file_sha256(path)
            meta = getattr(self.engine, "meta", {}) or {}
            card = meta.get("model_card") if isinstance(meta.get("model_card"), str) else (
                "2D U-Net, per-slice classes healthy / vessel / GGO / consolidation inside the lung cavity. "
                + (json.dumps({k: meta[k] for k in sorted(meta) if k in ("name", "data", "metrics", "trained", "epochs")})
                   if meta else "No model card in the checkpoint.")
                + " Research use only; not a medical device."
            )
        self.model_info = pb.ModelInfo(
            engine=self.config.engine if not self.slice_engine else "unet", model=model, weights_sha256=weights_sha,
            device=str(getattr(self.engine, "device", self.config.device)), default_lungs=self.config.lungs,
            lung_methods=lung_methods, model_card=card, software_version=coviax.__version__,
            max_concurrent_scans=self.config.max_concurrent_scans, max_queued_slices=self.config.max_queued_slices,
            max_scan_bytes=self.config.max_scan_bytes, max_slices=self.config.max_slices,
            max_chunk_bytes=self.config.max_chunk_bytes, notice=coviax.RESEARCH_USE_NOTICE, outputs=list(OUTPUTS),
        )
        self.metrics.model_info.info({
            "engine": self.model_info.engine, "model": model, "weights_sha256": weights_sha,
            "device": self.model_info.device, "version": coviax.__version__,
        })

    async def drain(self, timeout: float) -> None:
        """Stop admitting scans and wait (at most ``timeout`` s) for the scans in flight to finish."""
        self.draining = True
        deadline = time.monotonic() + timeout
        while self.slot_holders and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if self.slot_holders:
            log.warning("drain: %d scan(s) still in flight after %.0f s; they resume at the next start",
                        len(self.slot_holders), timeout)

    async def close(self) -> None:
        """Stop everything now. Rows stay as they are: the next start resumes or fails them."""
        self.closing = True
        for task in self._tasks:
            task.cancel()
        for job in list(self.live.values()):
            for t in list(job.pending):
                t.cancel()
            if job.task is not None:
                job.task.cancel()
            if job.open_file is not None:
                job.open_file.close()
        await asyncio.sleep(0)
        if self.queue is not None:
            await self.queue.stop()
        if self.pool is not None:
            processes = list(getattr(self.pool, "_processes", {}).values())
            self.pool.shutdown(wait=False, cancel_futures=True)
            for p in processes:
                if p.is_alive():
                    p.terminate()
            for p in processes:
                p.join(timeout=5)
        if self._progress_queue is not None:
            self._progress_queue.put(None)
            if self._progress_thread is not None:
                self._progress_thread.join(timeout=2)
        self.store.close()

    # ================================================================ admission

    def resolve_options(self, header: pb.Header) -> dict:
        """The job's options from the Header and the server defaults; FAILED_PRECONDITION if they cannot be met."""
        from coviax.lungs import LUNG_METHODS, lungmask_adapter

        o = header.options
        engine = o.engine or self.config.engine
        if engine != self.config.engine:
            raise precondition(
                f"this server runs the {self.config.engine} engine, not {engine!r}; leave options.engine empty "
                f"or send the scan to a server started with COVIAX_ENGINE={engine}"
            )
        if o.device and o.device != self.model_info.device and not (o.device == "cuda" and self.model_info.device.startswith("cuda")):
            raise precondition(
                f"options.device {o.device!r} asked for, but this server runs on {self.model_info.device}"
                + ("; it has no usable CUDA GPU" if o.device.startswith("cuda") else "")
            )
        lungs = o.lungs or self.config.lungs
        if lungs not in LUNG_METHODS:
            raise precondition(f"unknown lung method {lungs!r}; choose one of {', '.join(LUNG_METHODS)}")
        if lungs == "lungmask" and lungmask_adapter.find_weights("R231") is None:
            raise precondition("lungs=lungmask asked for, but the lungmask weights are not on this server; "
                               "use lungs=auto or lungs=classical")
        outputs = list(o.outputs) or list(OUTPUTS)
        unknown = sorted(set(outputs) - set(OUTPUTS))
        if unknown:
            raise precondition(f"unknown outputs {unknown}; choose from {', '.join(OUTPUTS)}")
        max_blobs = int(o.max_blobs) if o.HasField("max_blobs") else 10
        if max_blobs > 1000:
            raise precondition(f"max_blobs {max_blobs} outside 0..1000")
        for name, value, limit in (("idempotency_key", header.idempotency_key, 128),
                                   ("study_label", header.study_label, 256), ("client_ref", header.client_ref, 256),
                                   ("batch_id", header.batch_id, 128)):
            if len(value) > limit:
                raise precondition(f"{name} is {len(value)} characters long; the limit is {limit}")
        return {
            "lungs": lungs, "engine": self.config.engine, "outputs": outputs, "max_blobs": max_blobs,
            "series_uid": o.series_uid, "study_label": header.study_label, "device": self.model_info.device,
            "model": self.model_info.model, "model_notes": list(getattr(self.engine, "notes", []) or []),
        }

    def _check_capacity(self) -> None:
        if len(self.slot_holders) >= self.config.max_concurrent_scans:
            raise exhausted(
                f"{len(self.slot_holders)} scans are in flight, the limit of this server "
                f"(COVIAX_MAX_CONCURRENT_SCANS={self.config.max_concurrent_scans}); retry later"
            )
        if self.queue.depth >= self.config.max_queued_slices:
            raise exhausted(
                f"{self.queue.depth} slices are queued for the engine, the limit of this server "
                f"(COVIAX_MAX_QUEUED_SLICES={self.config.max_queued_slices}); retry later"
            )

    async def admit(self, header: pb.Header, streaming: bool, batch_id: str = "") -> tuple[LiveJob | dict, bool]:
        """A new job for ``header`` (RECEIVING), or the existing one its idempotency key names.

        Returns ``(job, existing)``; ``job`` is a LiveJob, or the stored row of a finished job.
        """
        if self.draining or self.closing:
            raise unavailable("the server is shutting down; retry (another replica, or this one after its restart)")
        if not self.ready:
            raise unavailable("the server is warming up; retry in a few seconds")
        options = self.resolve_options(header)
        if header.HasField("expected_instances") and header.expected_instances > self.config.max_slices:
            raise exhausted(f"{header.expected_instances} instances announced; this server takes at most "
                            f"{self.config.max_slices} per scan (COVIAX_MAX_SLICES)")
        if header.idempotency_key:
            row = await self.store.call(self._find_key, header.idempotency_key)
            if row is not None:
                return (self.live.get(row["job_id"]) or row), True
        if streaming:
            self._check_capacity()
        job_id = uuid.uuid4().hex
        row = await self.store.call(self.store.create_job, {
            "job_id": job_id, "idempotency_key": header.idempotency_key, "batch_id": batch_id or header.batch_id,
            "client_ref": header.client_ref, "options": options,
            "expected": header.expected_instances if header.HasField("expected_instances") else 0,
        })
        if row["existing"]:  # a concurrent request with the same key won the race
            return (self.live.get(row["job_id"]) or row), True
        if streaming:
            self._check_capacity()  # the awaits above may have let another stream in
        job = LiveJob(job_id=job_id, options=options, batch_id=row["batch_id"], client_ref=header.client_ref,
                      expected=row["expected"], streaming=streaming)
        (self.store.job_dir(job_id) / "input").mkdir(parents=True, exist_ok=True)
        self.live[job_id] = job
        if streaming:
            self._take_slot(job)
        log.info("job %s accepted (%s)", job_id, "stream" if streaming else "batch")
        return job, False

    def _find_key(self, key: str) -> dict | None:
        """The job an idempotency key names, unless that job may be replaced (cancelled, upload lost)."""
        row = self.store._conn.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
        if row is None:
            return None
        row = dict(row)
        return None if replaceable(row) else row

    def _take_slot(self, job: LiveJob) -> None:
        job.holds_slot = True
        self.slot_holders.add(job.job_id)
        self.metrics.scans_in_flight.set(len(self.slot_holders))

    def _release(self, job: LiveJob) -> None:
        """Give back the job's slot and queue places (synchronous: a cancellation cannot cut it short)."""
        if job.holds_slot:
            job.holds_slot = False
            self.slot_holders.discard(job.job_id)
            self.metrics.scans_in_flight.set(len(self.slot_holders))
        if job.extra:
            n, job.extra = job.extra, 0
            self.queue.release_extra_nowait(n)
        self._update_depth()
        if self._dispatch_wakeup is not None:
            self._dispatch_wakeup.set()

    def _update_depth(self) -> None:
        if self.queue is not None:
            self.metrics.queue_depth.set(self.queue.depth)

    # ================================================================ events

    def subscribe(self, job: LiveJob) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        job.subscribers.append(q)
        return q

    def unsubscribe(self, job: LiveJob, q: asyncio.Queue) -> None:
        if q in job.subscribers:
            job.subscribers.remove(q)

    def _emit(self, job: LiveJob, event: tuple) -> None:
        for q in job.subscribers:
            q.put_nowait(event)

    def _progress(self, job: LiveJob) -> None:
        self._emit(job, ("progress", pb.Progress(
            slices_received=job.received, slices_segmented=job.segmented, stage=job.stage,
            expected_slices=job.expected, bytes_received=job.bytes,
        )))

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
        elif stage == "lesions" and not self.slice_engine:
            job.segmented = job.received
        else:
            return
        self._progress(job)

    def _on_batch(self, n: int, seconds: float) -> None:
        self.metrics.slices.inc(n)
        self.metrics.stage_seconds.labels(stage="inference").observe(seconds)
        self._update_depth()

    # ================================================================ uploads

    async def receive(self, job: LiveJob, request: pb.SegmentRequest) -> None:
        """One DicomChunk or RawSlices message of ``job``'s upload."""
        if job.terminal:
            raise JobCancelled("the job was cancelled")
        which = request.WhichOneof("item")
        if which == "chunk":
            await self._on_chunk(job, request.chunk)
        elif which == "raw":
            await self._on_raw(job, request.raw)
        else:
            raise invalid(f"unexpected message {which!r} in the upload")

    def _count_bytes(self, job: LiveJob, n: int) -> None:
        if n > self.config.max_chunk_bytes:
            raise invalid(f"a chunk of {n} bytes; chunks may hold at most {self.config.max_chunk_bytes} bytes")
        job.bytes += n
        if job.bytes > self.config.max_scan_bytes:
            raise exhausted(f"the scan exceeds {self.config.max_scan_bytes} bytes, the limit of this server "
                            "(COVIAX_MAX_SCAN_BYTES)")

    async def _on_chunk(self, job: LiveJob, chunk: pb.DicomChunk) -> None:
        if job.kind == "raw":
            raise invalid("DicomChunk after RawSlices: one scan is sent either as DICOM or as raw slices")
        job.kind = "dicom"
        index = int(chunk.instance_index)
        if job.open_index is None:
            if index in job.done_indices:
                raise invalid(f"instance {index} was sent twice")
            if len(job.done_indices) >= self.config.max_slices:
                raise exhausted(f"the scan has more than {self.config.max_slices} instances, the limit of this "
                                "server (COVIAX_MAX_SLICES)")
            job.open_index = index
            job.open_file = open(self._instance_path(job.job_id, index), "wb")
        elif index != job.open_index:
            raise invalid(f"instance {index} began before instance {job.open_index} ended (no chunk with last=true); "
                          "send the instances one after the other")
        self._count_bytes(job, len(chunk.data))
        job.open_file.write(chunk.data)
        if chunk.last:
            job.open_file.close()
            job.open_file, job.open_index = None, None
            job.done_indices.add(index)
            job.received += 1
            if job.streaming and self.slice_engine:
                await self.queue.wait_for_room(self.config.max_queued_slices)
                self._spawn_segment_instance(job, self._instance_path(job.job_id, index))
            self._progress(job)

    def _instance_path(self, job_id: str, index: int) -> Path:
        return self.store.job_dir(job_id) / "input" / f"instance-{index:05d}.dcm"

    async def _on_raw(self, job: LiveJob, raw: pb.RawSlices) -> None:
        if job.kind == "dicom":
            raise invalid("RawSlices after DicomChunk: one scan is sent either as DICOM or as raw slices")
        input_dir = self.store.job_dir(job.job_id) / "input"
        if job.raw_geometry is None:
            if len(raw.spacing_zyx) != 3 or len(raw.origin_xyz) != 3 or len(raw.direction) != 9:
                raise invalid("the first RawSlices message needs spacing_zyx (3 values), origin_xyz (3) and direction (9)")
            if min(raw.spacing_zyx) <= 0:
                raise invalid(f"spacing_zyx {list(raw.spacing_zyx)} must be positive")
            if not raw.rows or not raw.columns or raw.rows * raw.columns > 2048 * 2048:
                raise invalid(f"RawSlices of {raw.rows}x{raw.columns} pixels; expected 1..2048 x 1..2048")
            if not 2 <= raw.total_slices <= self.config.max_slices:
                raise (exhausted if raw.total_slices > self.config.max_slices else invalid)(
                    f"RawSlices.total_slices is {raw.total_slices}; expected 2..{self.config.max_slices}")
            job.raw_geometry = {
                "rows": raw.rows, "columns": raw.columns, "slices": raw.total_slices,
                "spacing_zyx": list(raw.spacing_zyx), "origin_xyz": list(raw.origin_xyz),
                "direction": list(raw.direction),
            }
            job.kind = "raw"
            job.expected = raw.total_slices
            job.open_file = open(input_dir / "raw.bin", "wb")
        g = job.raw_geometry
        if (raw.rows, raw.columns) != (g["rows"], g["columns"]):
            raise invalid(f"RawSlices of {raw.rows}x{raw.columns} pixels after {g['rows']}x{g['columns']}")
        if raw.first_index != job.received:
            raise invalid(f"RawSlices.first_index {raw.first_index}; expected {job.received} (send slices in order)")
        if len(raw.hu) != raw.count * raw.rows * raw.columns * 2:
            raise invalid(f"RawSlices.hu holds {len(raw.hu)} bytes; {raw.count} int16 slices of "
                          f"{raw.rows}x{raw.columns} need {raw.count * raw.rows * raw.columns * 2}")
        if job.received + raw.count > g["slices"]:
            raise invalid(f"more raw slices than total_slices={g['slices']}")
        self._count_bytes(job, len(raw.hu))
        job.open_file.write(raw.hu)
        hu = np.frombuffer(raw.hu, dtype="<i2").reshape(raw.count, raw.rows, raw.columns).astype(np.int16)
        for k in range(raw.count):
            z = job.received
            job.received += 1
            if job.streaming and self.slice_engine:
                await self.queue.wait_for_room(self.config.max_queued_slices)
                self._spawn_predict(job, f"z:{z}", hu[k])
        self._progress(job)

    async def complete_upload(self, job: LiveJob) -> None:
        """The client half-closed (or sent EndOfScan): check, fsync, then queue or run the job."""
        if job.terminal:
            raise JobCancelled("the job was cancelled")
        if job.open_index is not None:
            raise invalid(f"the upload ended in the middle of instance {job.open_index} (no chunk with last=true)")
        if job.kind == "raw":
            job.open_file.close()
            job.open_file = None
            if job.received != job.raw_geometry["slices"]:
                raise invalid(f"{job.received} raw slices received; total_slices said {job.raw_geometry['slices']}")
            (self.store.job_dir(job.job_id) / "input" / "geometry.json").write_text(json.dumps(job.raw_geometry))
        if job.received == 0:
            raise invalid("the upload holds no DICOM instance and no raw slice")
        await asyncio.to_thread(self._fsync_input, job.job_id)
        job.upload_complete = True
        job.state = "QUEUED"
        self.metrics.stage_seconds.labels(stage="upload").observe(time.perf_counter() - job.started)
        await self.store.call(lambda: self.store.update(
            job.job_id, upload_complete=1, state="QUEUED", instances=job.received, bytes=job.bytes))
        log.info("job %s upload complete: %d slices, %d bytes", job.job_id, job.received, job.bytes)
        if job.streaming:
            job.task = asyncio.create_task(self._run(job), name=f"job-{job.job_id}")
        else:
            job.stage = "queued"
            self.pending.append(job.job_id)
            self._dispatch_wakeup.set()

    def _fsync_input(self, job_id: str) -> None:
        input_dir = self.store.job_dir(job_id) / "input"
        for path in input_dir.iterdir():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_path(input_dir)
        fsync_path(input_dir.parent)
        fsync_path(input_dir.parent.parent)

    # ================================================================ U-Net slices

    def _spawn_segment_instance(self, job: LiveJob, path: Path) -> None:
        self.queue.add_extra(1)  # counted from now: decoding is the first step of the queue
        job.extra += 1
        task = asyncio.create_task(self._segment_instance(job, path))
        job.pending.add(task)
        task.add_done_callback(job.pending.discard)

    async def _segment_instance(self, job: LiveJob, path: Path) -> None:
        try:
            decoded = await asyncio.to_thread(decode_instance, path)
        finally:
            job.extra -= 1
            await self.queue.release_extra(1)
        if decoded is None:  # not a CT slice we can decode: the 3D read will judge the upload
            return
        key, hu = decoded
        await self._predict(job, key, hu)

    def _spawn_predict(self, job: LiveJob, key: str, hu: np.ndarray) -> None:
        task = asyncio.create_task(self._predict(job, key, hu))
        job.pending.add(task)
        task.add_done_callback(job.pending.discard)

    async def _predict(self, job: LiveJob, key: str, hu: np.ndarray) -> None:
        if key in job.predictions or key in job.ambiguous:
            job.ambiguous.add(key)  # two instances share a SOPInstanceUID: the worker asks again by z
            job.predictions.pop(key, None)
            return
        job.predictions[key] = None  # reserved
        self._update_depth()
        prediction = await self.queue.submit(job.job_id, hu)
        if key in job.ambiguous:
            return
        job.predictions[key] = prediction
        job.segmented += 1
        self._progress(job)

    async def _predict_from_disk(self, job: LiveJob) -> None:
        """Predict every instance of a job whose upload was not streamed into the engine (batch, resumed)."""
        input_dir = self.store.job_dir(job.job_id) / "input"
        if (input_dir / "raw.bin").exists():
            volume = await asyncio.to_thread(worker.load_raw_volume, input_dir)
            for z in range(volume.shape[0]):
                await self.queue.wait_for_room(self.config.max_queued_slices)
                self._spawn_predict(job, f"z:{z}", volume.hu[z])
        else:
            for path in sorted(input_dir.glob("instance-*.dcm")):
                await self.queue.wait_for_room(self.config.max_queued_slices)
                self._spawn_segment_instance(job, path)

    # ================================================================ running a job

    async def _run(self, job: LiveJob) -> None:
        """Run a job whose upload is complete and that holds a slot."""
        loop = asyncio.get_running_loop()
        job_dir = self.store.job_dir(job.job_id)
        try:
            job.state = "RUNNING"
            job.attempt = await self.store.call(self._start_attempt, job.job_id)
            self._progress(job)
            engine = None
            if self.slice_engine:
                if not job.streaming or not job.predictions and not job.pending:
                    await self._predict_from_disk(job)
                while job.pending:
                    await asyncio.gather(*list(job.pending))
                predictions = {k: v for k, v in job.predictions.items() if v is not None}
            else:
                engine, predictions = self.engine, None
                job.extra += job.received
                self.queue.add_extra(job.received)
                self._update_depth()
            for _ in range(2):
                for old in job_dir.glob("out-*"):
                    shutil.rmtree(old, ignore_errors=True)
                job.worker_future = self.pool.submit(
                    worker.process_job, job.job_id, str(job_dir), f"out-{job.attempt}", job.options, engine, predictions)
                outcome = await asyncio.wrap_future(job.worker_future, loop=loop)
                if "need" not in outcome:
                    break
                log.warning("job %s: %d slices without a streamed prediction; predicting them now",
                            job.job_id, len(outcome["need"]))
                for z, hu in outcome["need"].items():
                    predictions[f"z:{z}"] = await self.queue.submit(job.job_id, hu)
            else:
                raise RuntimeError("slices still without a prediction after a second pass")
            if job.terminal:
                return
            report, artifacts = outcome["report"], outcome["artifacts"]
            await self.store.call(self.store.finish_done, job.job_id, report, artifacts)
            job.state, job.stage = "DONE", "done"
            job.segmented = job.received
            for stage, seconds in report.get("timings_s", {}).items():
                self.metrics.stage_seconds.labels(stage=stage).observe(float(seconds))
            if not self.slice_engine:
                self.metrics.slices.inc(job.received)
            self.metrics.results.labels(code="OK").inc()
            log.info("job %s done in %.1f s", job.job_id, time.perf_counter() - job.started)
            self._emit(job, ("done", result_from_report(job.job_id, report), pb.Artifacts(
                job_id=job.job_id, artifacts=artifact_refs(artifacts))))
            self.live.pop(job.job_id, None)
            self._release(job)
            await asyncio.to_thread(shutil.rmtree, job_dir / "input", True)
            self._schedule_retention()
        except asyncio.CancelledError:
            if not self.closing and not job.terminal:
                await self.cancel(job, "the job was stopped")
            raise
        except Exception as exc:
            if isinstance(exc, JobCancelled) or job.terminal:
                return
            await self.fail(job, exc)

    def _start_attempt(self, job_id: str) -> int:
        self.store._conn.execute("UPDATE jobs SET state = 'RUNNING', attempts = attempts + 1, updated = ? "
                                 "WHERE job_id = ?", (time.time(), job_id))
        return int(self.store._conn.execute("SELECT attempts FROM jobs WHERE job_id = ?", (job_id,)).fetchone()[0])

    async def _end(self, job: LiveJob, state: str, code: grpc.StatusCode, message: str) -> None:
        """Make ``job`` FAILED or CANCELLED: resources, subscribers, row, files.

        Everything up to the row is synchronous and the row's update is shielded, so that
        the cancellation of the task that called this (a handler whose client left) cannot
        leave a slot taken or a row unfinished.
        """
        if job.terminal:
            return
        job.state, job.stage = state, state.lower()
        job.error_code, job.error_message = code.name, message
        if state == "CANCELLED":
            try:
                (self.store.job_dir(job.job_id) / "CANCEL").touch()
            except OSError:
                pass
        for t in list(job.pending):
            t.cancel()
        self.queue.cancel_job(job.job_id)
        if job.open_file is not None:
            job.open_file.close()
            job.open_file = None
        self.live.pop(job.job_id, None)
        self._release(job)
        self.metrics.results.labels(code=code.name).inc()
        log.info("job %s %s (%s)", job.job_id, state.lower(), code.name)
        if not self.closing:
            update = self.store.call(lambda: self.store.update(
                job.job_id, state=state, error_code=code.name, error_message=message,
                instances=job.received, bytes=job.bytes))
            try:
                await asyncio.shield(update)
            finally:
                self._emit(job, ("error", code, message))
                self._remove_job_files(job)
        else:
            self._emit(job, ("error", code, message))

    def _remove_job_files(self, job: LiveJob) -> None:
        job_dir = self.store.job_dir(job.job_id)

        def remove(_=None):
            shutil.rmtree(job_dir, ignore_errors=True)

        future = job.worker_future
        if future is not None and not future.done():
            future.add_done_callback(remove)  # the worker stops at its next stage (CANCEL mark)
        else:
            remove()

    async def fail(self, job: LiveJob, exc: BaseException) -> None:
        input_dir = str(self.store.job_dir(job.job_id) / "input")
        code, message = to_status(exc, job.job_id, strip=(input_dir,))
        if code == grpc.StatusCode.CANCELLED:
            await self._end(job, "CANCELLED", code, message)
        else:
            await self._end(job, "FAILED", code, message)

    async def cancel(self, job: LiveJob, reason: str) -> None:
        if job.task is not None and job.task is not asyncio.current_task() and not job.task.done():
            job.task.cancel()
        await self._end(job, "CANCELLED", grpc.StatusCode.CANCELLED, reason)

    async def on_stream_gone(self, job: LiveJob, reason: str) -> None:
        """The Segment stream ended before the result (client cancel, deadline, network)."""
        if job.terminal:
            return
        if self.closing and job.upload_complete:
            return  # shutting down: the job is on disk and resumes at the next start
        try:
            await self.cancel(job, reason)
        except Exception:
            log.exception("job %s: cleaning up after the stream ended failed", job.job_id)

    async def cancel_by_id(self, job_id: str) -> pb.Job:
        job = self.live.get(job_id)
        if job is not None and not job.terminal:
            await self.cancel(job, "cancelled by CancelJob")
            if job_id in self.pending:
                self.pending.remove(job_id)
        return await self.get_job(job_id)

    # ================================================================ batch scheduling

    async def _dispatch(self) -> None:
        while True:
            await self._dispatch_wakeup.wait()
            self._dispatch_wakeup.clear()
            while (self.pending and not self.draining and len(self.slot_holders) < self.config.max_concurrent_scans
                   and self.queue.depth < self.config.max_queued_slices):
                job = self.live.get(self.pending.popleft())
                if job is None or job.terminal:
                    continue
                self._take_slot(job)
                job.task = asyncio.create_task(self._run(job), name=f"job-{job.job_id}")

    def _sweep(self) -> int:
        """Remove what a crash left behind: folders of unknown or failed jobs, uploads and stale outputs of done ones."""
        removed = 0
        for job_dir in self.store.jobs_dir.iterdir():
            row = self.store.get(job_dir.name)
            if row is not None and row["state"] in ("RECEIVING", "QUEUED", "RUNNING"):
                continue
            if row is None or row["state"] != "DONE":
                shutil.rmtree(job_dir, ignore_errors=True)
                removed += 1
                continue
            keep = {Path(a["path"]).parts[-2] for a in self.store.artifacts(row["job_id"])}
            for child in job_dir.iterdir():
                if child.name not in keep:
                    shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        return removed

    async def _resume(self) -> None:
        """Jobs left by the previous run: complete uploads are queued again, the others fail cleanly."""
        await self.store.call(self._sweep)
        rows = await self.store.call(self.store.active)
        for row in rows:
            job_dir = self.store.job_dir(row["job_id"])
            if row["upload_complete"] and (job_dir / "input").is_dir():
                job = LiveJob(job_id=row["job_id"], options=json.loads(row["options"]), batch_id=row["batch_id"],
                              client_ref=row["client_ref"], expected=row["expected"], state="QUEUED", stage="queued",
                              received=row["instances"], bytes=row["bytes"], upload_complete=True)
                self.live[job.job_id] = job
                self.pending.append(job.job_id)
                await self.store.call(lambda r=row: self.store.update(r["job_id"], state="QUEUED"))
                log.info("job %s resumed after a restart", job.job_id)
            else:
                message = ("the server restarted before the upload was complete; send the scan again "
                           "(the same idempotency key makes a new job)")
                await self.store.call(lambda r=row: self.store.update(
                    r["job_id"], state="FAILED", error_code="UNAVAILABLE", error_message=message))
                shutil.rmtree(job_dir, ignore_errors=True)
                log.info("job %s failed: upload incomplete at restart", row["job_id"])

    # ================================================================ queries

    async def get_job(self, job_id: str, with_result: bool = True) -> pb.Job:
        row = await self.store.call(self.store.get, job_id)
        if row is None:
            raise not_found(f"no job {job_id!r} on this server")
        artifacts = await self.store.call(self.store.artifacts, job_id) if with_result else []
        return job_message(row, self.live.get(job_id), artifacts, with_result)

    async def list_jobs(self, batch_id: str, state: str, page_size: int, token: str) -> pb.ListJobsResponse:
        try:
            offset = int(token) if token else 0
        except ValueError:
            raise invalid(f"page_token {token!r} is not one this server gave") from None
        limit = min(page_size or 100, 1000)
        rows = await self.store.call(lambda: self.store.list(batch_id, state, limit + 1, offset))
        more = len(rows) > limit
        jobs = [job_message(r, self.live.get(r["job_id"]), None, with_result=False) for r in rows[:limit]]
        return pb.ListJobsResponse(jobs=jobs, next_page_token=str(offset + limit) if more else "")

    async def artifact_file(self, job_id: str, name: str) -> tuple[Path, dict]:
        row = await self.store.call(self.store.get, job_id)
        if row is None:
            raise not_found(f"no job {job_id!r} on this server")
        if row["state"] != "DONE":
            raise precondition(f"job {job_id} is {row['state']}; artifacts exist once it is DONE")
        if row["artifacts_expired"]:
            raise not_found(f"the artifacts of job {job_id} were removed by the retention policy "
                            f"(COVIAX_RETENTION_DAYS={self.config.retention_days:g}, "
                            f"COVIAX_RETENTION_MAX_BYTES={self.config.retention_max_bytes})")
        for a in await self.store.call(self.store.artifacts, job_id):
            if a["name"] == name or a["file_name"] == name:
                path = self.config.data_dir / a["path"]
                if not path.is_file():
                    raise not_found(f"artifact {name!r} of job {job_id} is missing on disk")
                return path, a
        raise not_found(f"job {job_id} has no artifact {name!r}")

    # ================================================================ retention

    def _schedule_retention(self) -> None:
        if self.config.retention_max_bytes:
            self.spawn(self._retention_pass())

    async def _retention_loop(self) -> None:
        while True:
            try:
                await self._retention_pass()
            except Exception:  # a failed pass must not stop the loop
                log.exception("retention pass failed")
            await asyncio.sleep(RETENTION_INTERVAL_S)

    async def _retention_pass(self) -> int:
        """Remove the artifacts of finished jobs older than retention_days, then oldest first over the byte limit."""
        if not self.config.retention_days and not self.config.retention_max_bytes:
            return 0
        rows = await self.store.call(self.store.retention_candidates)
        total = sum(r["bytes"] for r in rows)
        cutoff = time.time() - self.config.retention_days * 86400
        removed = 0
        for r in rows:
            too_old = bool(self.config.retention_days) and (r["finished"] or 0) < cutoff
            too_big = bool(self.config.retention_max_bytes) and total > self.config.retention_max_bytes
            if not (too_old or too_big):
                continue
            await self.store.call(self.store.expire_artifacts, r["job_id"])
            job_dir = self.store.job_dir(r["job_id"])
            for out in job_dir.glob("out-*"):
                await asyncio.to_thread(shutil.rmtree, out, True)
            total -= r["bytes"]
            removed += 1
        if removed:
            log.info("retention: removed the artifacts of %d job(s)", removed)
        return removed


def decode_instance(path: Path) -> tuple[str, np.ndarray] | None:
    """(SOPInstanceUID, HU slice) of one received CT instance, or None if it is not one.

    The HU are computed as :mod:`coviax.scan` computes them (rescale, round,
    clip to [-1024, 3071]), so a streamed slice gets the same prediction as
    the slice of the volume read after the upload.
    """
    import pydicom

    from coviax.scan import HU_MAX, HU_MIN

    try:
        ds = pydicom.dcmread(path, force=False)
        if str(getattr(ds, "Modality", "")).upper() != "CT" or int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            return None
        pixels = ds.pixel_array
        if pixels.ndim != 2:
            return None
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    except Exception:  # any defect: the 3D read after the upload gives the real error message
        return None
    hu = np.clip(np.rint(pixels.astype(np.float32) * slope + intercept), HU_MIN, HU_MAX).astype(np.int16)
    key = str(getattr(ds, "SOPInstanceUID", "")) or f"file:{path.name}"
    return key, hu


__all__ = ["JobManager", "LiveJob", "ServiceError", "CoviaxError", "decode_instance"]
