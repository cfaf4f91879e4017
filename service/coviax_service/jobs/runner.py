"""Running a job whose upload is complete and that holds a slot, and ending jobs (FAILED, CANCELLED).

The 3D part (lungs, the K-means engine or the merge of the slice engine's
predictions, quantities, exports) runs in the worker pool through
:func:`coviax_service.worker.process_job`; the event loop never waits for it.
Artifacts are written and fsync'ed by the worker, then the job row becomes
DONE in one transaction. A job that ends otherwise gets FAILED or CANCELLED
with a status code name and a message (:func:`coviax_service.errors.classify`).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from concurrent.futures.process import BrokenProcessPool

from coviax_service import worker
from coviax_service.allocator import release_free_memory
from coviax_service.errors import PROCESS_EXITS, JobCancelled, WorkerDied, classify
from coviax_service.jobs.model import JobPart, JobState, Lifecycle, LiveJob

log = logging.getLogger("coviax.service")


class Runner(JobPart):
    """``engine``: the 3D engine handed to the workers (None with a slice engine, whose predictions
    ``predictor`` gathers). ``on_done``: called after a job became DONE (retention by size)."""

    def __init__(self, config, store, metrics, scheduler, lifecycle: Lifecycle, live: dict[str, LiveJob],
                 predictor=None, engine=None, on_done=None):
        super().__init__(config, store, metrics, scheduler, lifecycle, live)
        self.predictor = predictor
        self.engine = engine
        self.pool = None
        self.on_done = on_done

    def start(self, job: LiveJob) -> None:
        """Run ``job`` in the background (its upload is complete and it holds a slot)."""
        job.task = asyncio.create_task(self.run(job), name=f"job-{job.job_id}")

    async def run(self, job: LiveJob) -> None:
        try:
            job.advance(JobState.RUNNING)
            job.attempt = await self.store.call(self.store.start_attempt, job.job_id)
            job.emit_progress()
            outcome = await self._analyse(job)
            if job.terminal:
                return
            await self._finish(job, outcome["report"], outcome["artifacts"])
        except asyncio.CancelledError:
            if not self.lifecycle.closing and not job.terminal:
                await self.cancel(job, "the job was stopped")
            raise
        except PROCESS_EXITS:
            raise
        except BaseException as exc:  # noqa: BLE001 - a decoder's panic too: the job must end, never hang
            if isinstance(exc, JobCancelled) or job.terminal:
                return
            await self.fail(job, exc)

    async def _analyse(self, job: LiveJob) -> dict:
        """The worker's outcome: the report and the fsync'ed artifacts."""
        loop = asyncio.get_running_loop()
        job_dir = self.store.job_dir(job.job_id)
        engine, predictions = self.engine, None
        if self.predictor is not None:
            predictions = await self.predictor.predictions(job)
        else:
            job.extra += job.received
            self.scheduler.queue.add_extra(job.received)
            self.scheduler.update_depth()
        deaths = 0
        for _ in range(3):
            for old in job_dir.glob("out-*"):
                shutil.rmtree(old, ignore_errors=True)
            job.worker_future = future = self.pool.submit(
                worker.process_job, job.job_id, str(job_dir), f"out-{job.attempt}", job.options, engine, predictions)
            try:
                outcome = await asyncio.wrap_future(future, loop=loop)
            except BrokenProcessPool:
                # A worker died: this job's, or another's that took every job of the pool with it.
                # New workers, and one more try; a scan that kills its worker twice is the culprit.
                self.pool.replace(future.executor)
                deaths += 1
                if deaths == 2 or job.terminal:
                    raise WorkerDied(self.pool.memory_bytes) from None
                continue
            if "need" not in outcome:
                return outcome
            log.warning("job %s: %d slices without a streamed prediction; predicting them now",
                        job.job_id, len(outcome["need"]))
            for z, hu in outcome["need"].items():
                predictions[f"z:{z}"] = await self.scheduler.queue.submit(job.job_id, hu)
        raise RuntimeError("slices still without a prediction after a second pass")

    async def _finish(self, job: LiveJob, report: dict, artifacts: list[dict]) -> None:
        await self.store.call(self.store.finish_done, job.job_id, report, artifacts)
        job.advance(JobState.DONE)  # a cancel during the row's write has ended it (its row: CANCELLED)
        job.stage = "done"
        job.segmented = job.received
        for stage, seconds in report.get("timings_s", {}).items():
            self.metrics.stage_seconds.labels(stage=stage).observe(float(seconds))
        if self.predictor is None:
            self.metrics.slices.inc(job.received)
        self.metrics.results.labels(code="OK").inc()
        log.info("job %s done in %.1f s", job.job_id, time.perf_counter() - job.started)
        job.emit(("done", job.job_id, report, artifacts))
        self.live.pop(job.job_id, None)
        self.scheduler.release(job)
        release_free_memory()  # the job's buffers, back to the system (coviax_service.allocator)
        await asyncio.to_thread(shutil.rmtree, self.store.job_dir(job.job_id) / "input", True)
        if self.on_done is not None:
            self.on_done()

    # ------------------------------------------------------------------ ending a job otherwise

    async def end(self, job: LiveJob, state: JobState, code: str, message: str) -> None:
        """Make ``job`` FAILED or CANCELLED: resources, files, row, subscribers.

        Everything up to the row is synchronous and the row's update is shielded, so that
        the cancellation of the task that called this (a handler whose client left) cannot
        leave a slot taken or a row unfinished. The upload is deleted *before* the row is
        written: on a full disk that is what lets SQLite write the row.
        """
        if job.terminal:
            return
        job.state, job.stage = state, state.lower()
        job.error_code, job.error_message = code, message
        if state == JobState.CANCELLED:
            try:
                (self.store.job_dir(job.job_id) / "CANCEL").touch()
            except OSError:
                pass
        for t in list(job.pending):
            t.cancel()
        if self.scheduler.queue is not None:
            self.scheduler.queue.cancel_job(job.job_id)
        if job.upload.open_file is not None:
            try:
                job.upload.open_file.close()
            except OSError:  # the last write's data could not be flushed (disk full): the file goes anyway
                pass
            job.upload.open_file = None
        self.live.pop(job.job_id, None)
        self.scheduler.release(job)
        release_free_memory()  # the job's buffers, back to the system (coviax_service.allocator)
        self.metrics.results.labels(code=code).inc()
        log.info("job %s %s (%s)", job.job_id, state.lower(), code)
        if self.lifecycle.closing:
            job.emit(("error", code, message))
            return
        self._remove_files(job)
        update = self.store.call(lambda: self.store.update(
            job.job_id, state=state.value, error_code=code, error_message=message,
            instances=job.received, bytes=job.bytes))
        try:
            await asyncio.shield(update)
        except Exception:
            log.exception("job %s: could not record its end in the job store", job.job_id)
        finally:
            job.emit(("error", code, message))

    def _remove_files(self, job: LiveJob) -> None:
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
        code, message = classify(exc, job.job_id, strip=(input_dir,))
        await self.end(job, JobState.CANCELLED if code == "CANCELLED" else JobState.FAILED, code, message)

    async def cancel(self, job: LiveJob, reason: str) -> None:
        if job.task is not None and job.task is not asyncio.current_task() and not job.task.done():
            job.task.cancel()
        await self.end(job, JobState.CANCELLED, "CANCELLED", reason)
