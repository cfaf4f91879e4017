"""Uploads: DICOM instances and raw slices written to disk as they arrive, checked against the limits.

Each instance goes to ``DATA_DIR/jobs/ID/input/instance-NNNNN.dcm`` (raw slices to
``raw.bin`` + ``geometry.json``). With a slice engine, every complete instance of
a streamed scan is handed to :class:`~coviax_service.jobs.slices.SlicePredictor`
at once, so slices are segmented while the rest of the scan still arrives.

The messages are read by attribute (``instance_index``, ``data``, ``last`` of a
DicomChunk; the fields of RawSlices), so any object with those fields will do.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np

from coviax.files import fsync_path
from coviax_service.errors import InvalidRequest, JobCancelled, LimitExceeded
from coviax_service.jobs.model import JobPart, JobState, LiveJob

log = logging.getLogger("coviax.service")

#: Largest raw slice accepted (pixels), as for DICOM (coviax.io.pixels.MAX_SLICE_PIXELS).
MAX_RAW_PIXELS = 2048 * 2048


class Uploads(JobPart):
    """``predictor``: the SlicePredictor of a slice engine, or None (3D engines wait for the whole scan).
    ``on_complete(job)``: called once a streamed job's upload is on disk (it starts the job)."""

    def __init__(self, config, store, metrics, scheduler, predictor, on_complete: Callable[[LiveJob], None]):
        super().__init__(config, store, metrics, scheduler)
        self.predictor = predictor
        self.on_complete = on_complete

    def instance_path(self, job_id: str, index: int) -> Path:
        return self.store.job_dir(job_id) / "input" / f"instance-{index:05d}.dcm"

    def _count_bytes(self, job: LiveJob, n: int) -> None:
        if n > self.config.max_chunk_bytes:
            raise InvalidRequest(f"a chunk of {n} bytes; chunks may hold at most {self.config.max_chunk_bytes} bytes")
        job.bytes += n
        if job.bytes > self.config.max_scan_bytes:
            raise LimitExceeded(f"the scan exceeds {self.config.max_scan_bytes} bytes, the limit of this server "
                                "(COVIAX_MAX_SCAN_BYTES)")

    # ------------------------------------------------------------------ DICOM

    async def receive_chunk(self, job: LiveJob, chunk) -> None:
        """One DicomChunk of ``job``'s upload."""
        up = _open_upload(job, "dicom")
        up.kind = "dicom"
        index = int(chunk.instance_index)
        if up.open_index is None:
            if index in up.done_indices:
                raise InvalidRequest(f"instance {index} was sent twice")
            if len(up.done_indices) >= self.config.max_slices:
                raise LimitExceeded(f"the scan has more than {self.config.max_slices} instances, the limit of this "
                                    "server (COVIAX_MAX_SLICES)")
            up.open_index = index
            up.open_file = open(self.instance_path(job.job_id, index), "wb")
        elif index != up.open_index:
            raise InvalidRequest(f"instance {index} began before instance {up.open_index} ended (no chunk with "
                                 "last=true); send the instances one after the other")
        self._count_bytes(job, len(chunk.data))
        up.open_file.write(chunk.data)
        if chunk.last:
            up.open_file.close()
            up.open_file, up.open_index = None, None
            up.done_indices.add(index)
            job.received += 1
            if job.streaming and self.predictor is not None:
                await self.predictor.wait_for_room()
                self.predictor.spawn_instance(job, self.instance_path(job.job_id, index))
            job.emit_progress()

    # ------------------------------------------------------------------ raw slices

    def _raw_geometry(self, raw) -> dict:
        """The geometry of the first RawSlices message, checked."""
        if len(raw.spacing_zyx) != 3 or len(raw.origin_xyz) != 3 or len(raw.direction) != 9:
            raise InvalidRequest("the first RawSlices message needs spacing_zyx (3 values), origin_xyz (3) and "
                                 "direction (9)")
        spacing = [float(v) for v in raw.spacing_zyx]
        if not all(math.isfinite(v) and v > 0 for v in spacing):
            raise InvalidRequest(f"spacing_zyx {spacing} must be three positive, finite numbers (mm)")
        for name, values in (("origin_xyz", raw.origin_xyz), ("direction", raw.direction)):
            if not all(math.isfinite(float(v)) for v in values):
                raise InvalidRequest(f"{name} {[float(v) for v in values]} must hold finite numbers")
        direction = np.asarray(raw.direction, dtype=np.float64).reshape(3, 3)
        if abs(abs(float(np.linalg.det(direction))) - 1.0) > 1e-3:
            raise InvalidRequest(f"direction {[float(v) for v in raw.direction]} is not a rotation "
                                 "(3x3 direction cosines, row-major, determinant +-1)")
        if not raw.rows or not raw.columns or raw.rows * raw.columns > MAX_RAW_PIXELS:
            raise InvalidRequest(f"RawSlices of {raw.rows}x{raw.columns} pixels; expected 1..2048 x 1..2048")
        if not 2 <= raw.total_slices <= self.config.max_slices:
            raise (LimitExceeded if raw.total_slices > self.config.max_slices else InvalidRequest)(
                f"RawSlices.total_slices is {raw.total_slices}; expected 2..{self.config.max_slices}")
        return {
            "rows": raw.rows, "columns": raw.columns, "slices": raw.total_slices, "spacing_zyx": spacing,
            "origin_xyz": [float(v) for v in raw.origin_xyz], "direction": [float(v) for v in raw.direction],
        }

    async def receive_raw(self, job: LiveJob, raw) -> None:
        """One RawSlices message of ``job``'s upload."""
        up = _open_upload(job, "raw")
        if up.raw_geometry is None:
            up.raw_geometry = self._raw_geometry(raw)
            up.kind = "raw"
            job.expected = raw.total_slices
            up.open_file = open(self.store.job_dir(job.job_id) / "input" / "raw.bin", "wb")
        g = up.raw_geometry
        if (raw.rows, raw.columns) != (g["rows"], g["columns"]):
            raise InvalidRequest(f"RawSlices of {raw.rows}x{raw.columns} pixels after {g['rows']}x{g['columns']}")
        if raw.first_index != job.received:
            raise InvalidRequest(f"RawSlices.first_index {raw.first_index}; expected {job.received} "
                                 "(send slices in order)")
        if len(raw.hu) != raw.count * raw.rows * raw.columns * 2:
            raise InvalidRequest(f"RawSlices.hu holds {len(raw.hu)} bytes; {raw.count} int16 slices of "
                                 f"{raw.rows}x{raw.columns} need {raw.count * raw.rows * raw.columns * 2}")
        if job.received + raw.count > g["slices"]:
            raise InvalidRequest(f"more raw slices than total_slices={g['slices']}")
        self._count_bytes(job, len(raw.hu))
        up.open_file.write(raw.hu)
        hu = np.frombuffer(raw.hu, dtype="<i2").reshape(raw.count, raw.rows, raw.columns).astype(np.int16)
        for k in range(raw.count):
            z = job.received
            job.received += 1
            if job.streaming and self.predictor is not None:
                await self.predictor.wait_for_room()
                self.predictor.spawn_slice(job, f"z:{z}", hu[k])
        job.emit_progress()

    # ------------------------------------------------------------------ end of the upload

    async def complete(self, job: LiveJob) -> None:
        """The client half-closed (or sent EndOfScan): check, fsync, then start (stream) or queue (batch) the job."""
        if job.terminal:
            raise JobCancelled("the job was cancelled")
        up = job.upload
        if up.open_index is not None:
            raise InvalidRequest(f"the upload ended in the middle of instance {up.open_index} (no chunk with "
                                 "last=true)")
        if up.kind == "raw":
            up.open_file.close()
            up.open_file = None
            if job.received != up.raw_geometry["slices"]:
                raise InvalidRequest(f"{job.received} raw slices received; total_slices said "
                                     f"{up.raw_geometry['slices']}")
            (self.store.job_dir(job.job_id) / "input" / "geometry.json").write_text(json.dumps(up.raw_geometry))
        if job.received == 0:
            raise InvalidRequest("the upload holds no DICOM instance and no raw slice")
        try:
            await asyncio.to_thread(self._fsync_input, job.job_id)
        except OSError:
            if job.terminal:  # cancelled meanwhile, and its files removed
                raise JobCancelled("the job was cancelled") from None
            raise
        # A cancel (CancelJob, the client's deadline) may have ended the job during the fsync: then
        # it must stay CANCELLED, not be queued and run (advance raises JobCancelled).
        job.advance(JobState.QUEUED)
        job.upload_complete = True
        self.metrics.stage_seconds.labels(stage="upload").observe(time.perf_counter() - job.started)
        await self.store.call(lambda: self.store.update(
            job.job_id, upload_complete=1, state=JobState.QUEUED.value, instances=job.received, bytes=job.bytes))
        if job.terminal:  # cancelled while the row was written; end() wrote CANCELLED after it
            raise JobCancelled("the job was cancelled")
        log.info("job %s upload complete: %d slices, %d bytes", job.job_id, job.received, job.bytes)
        if job.streaming:
            self.on_complete(job)
        else:
            self.scheduler.enqueue(job)

    def _fsync_input(self, job_id: str) -> None:
        input_dir = self.store.job_dir(job_id) / "input"
        for path in input_dir.iterdir():
            fsync_path(path)
        fsync_path(input_dir)
        fsync_path(input_dir.parent)
        fsync_path(input_dir.parent.parent)


def _open_upload(job: LiveJob, kind: str):
    """``job``'s upload, for a message of ``kind`` ("dicom" or "raw"): JobCancelled once the job is over,
    InvalidRequest when the scan came as the other kind."""
    if job.terminal:
        raise JobCancelled("the job was cancelled")
    up = job.upload
    if up.kind == ("raw" if kind == "dicom" else "dicom"):
        order = "DicomChunk after RawSlices" if kind == "dicom" else "RawSlices after DicomChunk"
        raise InvalidRequest(f"{order}: one scan is sent either as DICOM or as raw slices")
    return up
