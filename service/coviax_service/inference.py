"""The queue in front of the one shared slice engine (the U-Net): batches slices across scans.

Every decoded slice of every scan in flight goes into one FIFO. A single
consumer takes up to ``batch_slices`` slices of the same size (from any
scans), runs ``engine.predict_slices`` on them in one dedicated thread (the
device is used by one batch at a time; the event loop never waits for it)
and resolves each slice's future. ``depth`` (slices queued or in the running
batch) is the ``coviax_queue_depth`` gauge and the admission limit.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("coviax.service")


@dataclass
class _Item:
    job_id: str
    hu: np.ndarray
    future: asyncio.Future


class InferenceQueue:
    def __init__(self, engine, batch_slices: int, on_batch=None):
        self.engine = engine
        self.batch_slices = batch_slices
        self.on_batch = on_batch  # callback(n_slices, seconds) for metrics
        self._items: collections.deque[_Item] = collections.deque()
        self._wakeup = asyncio.Event()
        self._room = asyncio.Condition()
        self._running = 0  # slices in the batch on the device now
        self._extra = 0  # slices counted by callers (3D engines: whole scans waiting for a worker)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="coviax-infer")
        self._task: asyncio.Task | None = None
        self._notifiers: set[asyncio.Task] = set()

    @property
    def depth(self) -> int:
        return len(self._items) + self._running + self._extra

    def start(self) -> None:
        self._task = asyncio.create_task(self._consume(), name="coviax-inference")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for item in self._items:
            if not item.future.done():
                item.future.cancel()
        self._items.clear()
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def run_now(self, hu: np.ndarray) -> np.ndarray:
        """Predict outside the queue (warm-up)."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, self.engine.predict_slices, hu)

    def submit(self, job_id: str, hu: np.ndarray) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._items.append(_Item(job_id, hu, future))
        self._wakeup.set()
        return future

    def add_extra(self, n: int) -> None:
        self._extra += n

    async def release_extra(self, n: int) -> None:
        self._extra = max(0, self._extra - n)
        await self._notify_room()

    def release_extra_nowait(self, n: int) -> None:
        self._extra = max(0, self._extra - n)
        self._notify_soon()

    def _notify_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self._notify_room())
        self._notifiers.add(task)
        task.add_done_callback(self._notifiers.discard)

    async def wait_for_room(self, limit: int) -> None:
        """Backpressure for a scan already admitted: wait while the queue is full."""
        if self.depth < limit:
            return
        async with self._room:
            await self._room.wait_for(lambda: self.depth < limit)

    async def _notify_room(self) -> None:
        async with self._room:
            self._room.notify_all()

    def cancel_job(self, job_id: str) -> int:
        """Drop the queued slices of a job; returns how many were dropped."""
        keep, dropped = collections.deque(), 0
        for item in self._items:
            if item.job_id == job_id:
                dropped += 1
                if not item.future.done():
                    item.future.cancel()
            else:
                keep.append(item)
        self._items = keep
        if dropped:
            self._notify_soon()
        return dropped

    def _take_batch(self) -> list[_Item]:
        """Up to batch_slices items, FIFO, all of the first item's size (others keep their place)."""
        first = self._items.popleft()
        batch, rest = [first], collections.deque()
        while self._items and len(batch) < self.batch_slices:
            item = self._items.popleft()
            if item.hu.shape == first.hu.shape and not item.future.done():
                batch.append(item)
            elif not item.future.done():
                rest.append(item)
        rest.extend(self._items)
        self._items = rest
        return [i for i in batch if not i.future.done()]

    async def _consume(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._items:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = self._take_batch()
            if not batch:
                continue
            self._running = len(batch)
            started = time.perf_counter()
            try:
                stack = np.stack([i.hu for i in batch])
                result = await loop.run_in_executor(self._thread, self.engine.predict_slices, stack)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the engine failed: every slice of the batch fails with it
                log.error("inference failed on a batch of %d slices", len(batch), exc_info=exc)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
            else:
                for k, item in enumerate(batch):
                    if not item.future.done():
                        item.future.set_result(result[k])
                if self.on_batch:
                    self.on_batch(len(batch), time.perf_counter() - started)
            finally:
                self._running = 0
            await self._notify_room()
