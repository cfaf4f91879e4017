"""Admission: a scan's Header becomes a job (RECEIVING), or the job its idempotency key names.

Checks, in order: the server's phase (warming up, draining), the options
against what this server can do (FAILED_PRECONDITION), the announced size
against the limits, the idempotency key, and for a Segment stream a free slot
(RESOURCE_EXHAUSTED). A slot is reserved *before* the row is written, so that
concurrent Headers cannot all pass the check; and a row written for a scan that
is then refused is marked FAILED at once, never left RECEIVING.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from coviax_service.errors import LimitExceeded, Unavailable, Unsupported, classify
from coviax_service.jobs.model import TEXT_LIMITS, JobOptions, JobPart, JobRequest, JobState, Lifecycle, LiveJob
from coviax_service.jobs.scheduler import Scheduler

log = logging.getLogger("coviax.service")


class Admission(JobPart):
    """``describe``: a callable giving the running engine's (device, model id, model notes)."""

    def __init__(self, config, store, metrics, scheduler: Scheduler, lifecycle: Lifecycle, live: dict[str, LiveJob],
                 describe):
        super().__init__(config, store, metrics, scheduler, lifecycle, live)
        self.describe = describe

    def resolve_options(self, request: JobRequest) -> JobOptions:
        """The job's options from the request and the server defaults; FAILED_PRECONDITION if they cannot be met."""
        from coviax.lungs import lungmask_adapter
        from coviax.lungs import unet as lung_unet

        device, model, notes = self.describe()
        engine = request.engine or self.config.engine
        if engine != self.config.engine:
            raise Unsupported(
                f"this server runs the {self.config.engine} engine, not {engine!r}; leave options.engine empty "
                f"or send the scan to a server started with COVIAX_ENGINE={engine}"
            )
        if request.device and request.device != device and not (request.device == "cuda" and device.startswith("cuda")):
            raise Unsupported(
                f"options.device {request.device!r} asked for, but this server runs on {device}"
                + ("; it has no usable CUDA GPU" if request.device.startswith("cuda") else "")
            )
        options = JobOptions.resolve(request, engine=self.config.engine, lungs=self.config.lungs, device=device,
                                     model=model, model_notes=notes)
        if options.lungs == "lungmask" and lungmask_adapter.find_weights("R231") is None:
            raise Unsupported("lungs=lungmask asked for, but the lungmask weights are not on this server; "
                              "use lungs=auto or lungs=classical")
        if options.lungs == "unet" and lung_unet.find_weights() is None:
            raise Unsupported("lungs=unet asked for, but the lung network's weights are not on this server; "
                              "use lungs=auto or lungs=classical")
        for name, limit in TEXT_LIMITS:
            value = getattr(request, name)
            if len(value) > limit:
                raise Unsupported(f"{name} is {len(value)} characters long; the limit is {limit}")
        return options

    async def admit(self, request: JobRequest, streaming: bool, batch_id: str = "") -> tuple[LiveJob | dict, bool]:
        """A new job for ``request`` (RECEIVING), or the existing one its idempotency key names.

        Returns ``(job, existing)``; ``job`` is a LiveJob, or the stored row of a finished job.
        """
        if self.lifecycle.draining or self.lifecycle.closing:
            raise Unavailable("the server is shutting down; retry (another replica, or this one after its restart)")
        if not self.lifecycle.ready:
            raise Unavailable("the server is warming up; retry in a few seconds")
        options = self.resolve_options(request)
        expected = request.expected_instances
        if expected is not None and expected > self.config.max_slices:
            raise LimitExceeded(f"{expected} instances announced; this server takes at most "
                                f"{self.config.max_slices} per scan (COVIAX_MAX_SLICES)")
        if request.idempotency_key:
            row = await self.store.call(self.store.find_key, request.scoped_key)
            if row is not None:
                return (self.live.get(row["job_id"]) or row), True
        if streaming:
            self.scheduler.reserve()
        try:
            job, existing = await self._create(request, options, streaming, batch_id)
        except BaseException:
            if streaming:
                self.scheduler.unreserve()
            raise
        if streaming:
            if existing:
                self.scheduler.unreserve()
            else:
                self.scheduler.take(job, reserved=True)
        if not existing:
            log.info("job %s accepted (%s)", job.job_id, "stream" if streaming else "batch")
        return job, existing

    async def _create(self, request: JobRequest, options: JobOptions, streaming: bool,
                      batch_id: str) -> tuple[LiveJob | dict, bool]:
        job_id = uuid.uuid4().hex
        insert = asyncio.ensure_future(self.store.call(self.store.create_job, {
            "job_id": job_id, "idempotency_key": request.scoped_key, "batch_id": batch_id or request.batch_id,
            "client_ref": request.client_ref, "options": options.to_dict(),
            "expected": request.expected_instances or 0, "tenant": request.tenant,
        }))
        try:
            row = await asyncio.shield(insert)
        except asyncio.CancelledError as gone:
            # The client went away while its row was being written: the write goes on in the store's
            # thread, and a row written must end FAILED, never stay RECEIVING with nobody to finish it.
            row = await asyncio.shield(insert)
            if not row["existing"]:
                await self._refuse(job_id, gone)
            raise
        if row["existing"]:  # a concurrent request with the same key won the race
            return (self.live.get(row["job_id"]) or row), True
        try:
            job = LiveJob(job_id=job_id, options=options, batch_id=row["batch_id"], client_ref=request.client_ref,
                          expected=row["expected"], streaming=streaming)
            await asyncio.to_thread((self.store.job_dir(job_id) / "input").mkdir, parents=True, exist_ok=True)
        except BaseException as exc:
            await self._refuse(job_id, exc)
            raise
        self.live[job_id] = job
        return job, False

    async def _refuse(self, job_id: str, exc: BaseException) -> None:
        """The row of a job refused after it was written: FAILED (so its key can be used again), files gone."""
        import shutil

        if isinstance(exc, asyncio.CancelledError):
            code, message = "CANCELLED", "the client went away before its scan was accepted"
        elif isinstance(exc, Exception):
            code, message = classify(exc, job_id)
        else:
            code, message = "UNAVAILABLE", "the server stopped"
        self.metrics.results.labels(code=code).inc()  # a finished row like any other (metrics == rows)
        await asyncio.to_thread(shutil.rmtree, self.store.job_dir(job_id), True)
        try:
            await asyncio.shield(self.store.call(lambda: self.store.update(
                job_id, state=JobState.FAILED.value, error_code=code, error_message=message)))
        except Exception:
            log.exception("job %s: could not mark the refused job FAILED", job_id)
