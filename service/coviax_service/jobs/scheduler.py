"""Slots and the queue of waiting jobs: who may run now, and what the last run left behind.

A Segment stream takes a *slot* (``max_concurrent_scans``) when its Header is
admitted and keeps it until the job ends, so that a slice engine can segment
each instance while the rest still arrives. SubmitBatch scans and jobs resumed
after a restart wait in QUEUED (on disk); :meth:`Scheduler.dispatch` gives them
free slots.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import shutil
from pathlib import Path
from typing import Callable

from coviax_service.errors import LimitExceeded
from coviax_service.jobs.model import JobOptions, JobState, Lifecycle, LiveJob

log = logging.getLogger("coviax.service")

RESTART_MESSAGE = ("the server restarted before the upload was complete; send the scan again "
                   "(the same idempotency key makes a new job)")


class Scheduler:
    """The slots, the jobs waiting for one, and the queue depth they are admitted against.

    ``queue``: the InferenceQueue (its ``depth`` and the places counted outside it), set once it exists.
    """

    def __init__(self, config, metrics, lifecycle: Lifecycle, live: dict[str, LiveJob]):
        self.config = config
        self.metrics = metrics
        self.lifecycle = lifecycle
        self.live = live
        self.queue = None
        self.holders: set[str] = set()
        self.reserved = 0  # slots promised to admissions still writing their row
        self.pending: collections.deque[str] = collections.deque()
        self.wakeup = asyncio.Event()

    # ------------------------------------------------------------------ slots

    @property
    def queue_depth(self) -> int:
        return self.queue.depth if self.queue is not None else 0

    def check_capacity(self) -> None:
        """RESOURCE_EXHAUSTED if no slot is free or the engine's queue is full."""
        taken = len(self.holders) + self.reserved
        if taken >= self.config.max_concurrent_scans:
            raise LimitExceeded(
                f"{taken} scans are in flight, the limit of this server "
                f"(COVIAX_MAX_CONCURRENT_SCANS={self.config.max_concurrent_scans}); retry later"
            )
        if self.queue_depth >= self.config.max_queued_slices:
            raise LimitExceeded(
                f"{self.queue_depth} slices are queued for the engine, the limit of this server "
                f"(COVIAX_MAX_QUEUED_SLICES={self.config.max_queued_slices}); retry later"
            )

    def reserve(self) -> None:
        """Check capacity and hold a slot for an admission in progress (synchronous: no other stream can
        pass the check in between). Give it back with :meth:`unreserve` or turn it into a slot with :meth:`take`."""
        self.check_capacity()
        self.reserved += 1

    def unreserve(self) -> None:
        self.reserved = max(0, self.reserved - 1)

    def take(self, job: LiveJob, reserved: bool = False) -> None:
        if reserved:
            self.unreserve()
        job.holds_slot = True
        self.holders.add(job.job_id)
        self.metrics.scans_in_flight.set(len(self.holders))

    def release(self, job: LiveJob) -> None:
        """Give back the job's slot and queue places (synchronous: a cancellation cannot cut it short)."""
        if job.holds_slot:
            job.holds_slot = False
            self.holders.discard(job.job_id)
            self.metrics.scans_in_flight.set(len(self.holders))
        if job.extra and self.queue is not None:
            n, job.extra = job.extra, 0
            self.queue.release_extra_nowait(n)
        self.update_depth()
        self.wakeup.set()

    def update_depth(self) -> None:
        if self.queue is not None:
            self.metrics.queue_depth.set(self.queue.depth)

    # ------------------------------------------------------------------ waiting jobs

    def enqueue(self, job: LiveJob) -> None:
        job.stage = "queued"
        self.pending.append(job.job_id)
        self.wakeup.set()

    def forget(self, job_id: str) -> None:
        if job_id in self.pending:
            self.pending.remove(job_id)

    async def dispatch(self, run: Callable[[LiveJob], object]) -> None:
        """Forever: give free slots to waiting jobs and start ``run(job)`` for each."""
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while (self.pending and not self.lifecycle.draining
                   and len(self.holders) + self.reserved < self.config.max_concurrent_scans
                   and self.queue_depth < self.config.max_queued_slices):
                job = self.live.get(self.pending.popleft())
                if job is None or job.terminal:
                    continue
                self.take(job)
                job.task = asyncio.create_task(run(job), name=f"job-{job.job_id}")


# ---------------------------------------------------------------------- restart


def sweep(store) -> int:
    """Remove what a crash left behind: folders of unknown or failed jobs, uploads and stale outputs of done ones.

    Runs on the store's thread (``store.call(sweep, store)``).
    """
    removed = 0
    for job_dir in store.jobs_dir.iterdir():
        row = store.get(job_dir.name)
        if row is not None and row["state"] in (JobState.RECEIVING, JobState.QUEUED, JobState.RUNNING):
            continue
        if row is None or row["state"] != JobState.DONE:
            shutil.rmtree(job_dir, ignore_errors=True)
            removed += 1
            continue
        keep = {Path(a["path"]).parts[-2] for a in store.artifacts(row["job_id"])}
        for child in job_dir.iterdir():
            if child.name not in keep:
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
    return removed


async def resume(store, scheduler: Scheduler) -> None:
    """Jobs left by the previous run: complete uploads are queued again, the others fail cleanly."""
    await store.call(sweep, store)
    for row in await store.call(store.active):
        job_dir = store.job_dir(row["job_id"])
        if row["upload_complete"] and (job_dir / "input").is_dir():
            job = LiveJob(job_id=row["job_id"], options=JobOptions.from_dict(json.loads(row["options"])),
                          batch_id=row["batch_id"], client_ref=row["client_ref"], expected=row["expected"],
                          state=JobState.QUEUED, stage="queued", received=row["instances"], bytes=row["bytes"],
                          upload_complete=True)
            scheduler.live[job.job_id] = job
            scheduler.pending.append(job.job_id)
            await store.call(lambda r=row: store.update(r["job_id"], state=JobState.QUEUED.value))
            log.info("job %s resumed after a restart", job.job_id)
        else:
            await store.call(lambda r=row: store.update(
                r["job_id"], state=JobState.FAILED.value, error_code="UNAVAILABLE", error_message=RESTART_MESSAGE))
            shutil.rmtree(job_dir, ignore_errors=True)
            log.info("job %s failed: upload incomplete at restart", row["job_id"])
