"""Slices to the shared slice engine while a scan arrives (the U-Net), and back from it.

Every complete instance is decoded in a decoder process with a memory limit
(:class:`~coviax_service.decoding.DecoderPool`, :func:`decode_instance`) and its
slice submitted to the shared :class:`~coviax_service.inference.InferenceQueue`;
the predictions are kept on the job, keyed by SOPInstanceUID (``z:INDEX`` for
raw slices), until the 3D step merges them with the lung cavity.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np

from coviax_service.decoding import DecoderPool
from coviax_service.jobs.model import LiveJob

log = logging.getLogger("coviax.service")


class SlicePredictor:
    """Feeds the slices of streamed (or, later, stored) scans to the shared queue of a slice engine."""

    def __init__(self, config, store, scheduler, decoder: DecoderPool | None = None):
        self.config = config
        self.store = store
        self.scheduler = scheduler
        self.decoder = decoder or DecoderPool()

    @property
    def queue(self):
        return self.scheduler.queue

    async def wait_for_room(self) -> None:
        """Backpressure: wait while the engine's queue is full."""
        await self.queue.wait_for_room(self.config.max_queued_slices)

    def _track(self, job: LiveJob, coro) -> None:
        task = asyncio.create_task(coro)
        job.pending.add(task)
        task.add_done_callback(job.pending.discard)

    def spawn_instance(self, job: LiveJob, path: Path) -> None:
        """Decode and predict one stored instance, in the background."""
        self.queue.add_extra(1)  # counted from now: decoding is the first step of the queue
        job.extra += 1
        self._track(job, self._segment_instance(job, path))

    def spawn_slice(self, job: LiveJob, key: str, hu: np.ndarray) -> None:
        """Predict one HU slice, in the background."""
        self._track(job, self._predict(job, key, hu))

    async def _segment_instance(self, job: LiveJob, path: Path) -> None:
        try:
            decoded = await self.decoder.decode(path)
        finally:
            job.extra -= 1
            await self.queue.release_extra(1)
        if decoded is None:  # not a CT slice we can decode: the 3D read will judge the upload
            return
        key, hu = decoded
        await self._predict(job, key, hu)

    async def _predict(self, job: LiveJob, key: str, hu: np.ndarray) -> None:
        if key in job.predictions or key in job.ambiguous:
            job.ambiguous.add(key)  # two instances share a SOPInstanceUID: the worker asks again by z
            job.predictions.pop(key, None)
            return
        job.predictions[key] = None  # reserved
        self.scheduler.update_depth()
        prediction = await self.queue.submit(job.job_id, hu)
        if key in job.ambiguous:
            return
        job.predictions[key] = prediction
        job.segmented += 1
        job.emit_progress()

    async def predict_from_disk(self, job: LiveJob) -> None:
        """Predict every slice of a job whose upload was not streamed into the engine (batch, resumed)."""
        from coviax_service import worker

        input_dir = self.store.job_dir(job.job_id) / "input"
        if (input_dir / "raw.bin").exists():
            volume = await asyncio.to_thread(worker.load_raw_volume, input_dir)
            for z in range(volume.shape[0]):
                await self.wait_for_room()
                self.spawn_slice(job, f"z:{z}", volume.hu[z])
        else:
            for path in sorted(input_dir.glob("instance-*.dcm")):
                await self.wait_for_room()
                self.spawn_instance(job, path)

    async def predictions(self, job: LiveJob) -> dict[str, np.ndarray]:
        """The job's predictions once every slice in flight is done (predicted from disk if none was streamed)."""
        if not job.streaming or not job.predictions and not job.pending:
            await self.predict_from_disk(job)
        while job.pending:
            await asyncio.gather(*list(job.pending))
        return {k: v for k, v in job.predictions.items() if v is not None}
