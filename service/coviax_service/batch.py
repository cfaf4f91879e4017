"""One SubmitBatch stream: several scans, each Header + data + EndOfScan, one BatchEvent per scan.

The client stream is a sequence of scans; a scan ends at its EndOfScan, at the
next Header or at the half-close. Every scan is answered ``accepted`` (its job is
QUEUED on disk) or ``rejected`` (code and message); one bad scan never stops the
batch: after a rejection the rest of that scan is skipped. The stream ends with
``done`` (batch id and counts).
"""

from __future__ import annotations

import asyncio
import uuid

from coviax_api.coviax.v1 import coviax_pb2 as pb
from coviax_service.convert import Malformed, request_from_header
from coviax_service.errors import Unsupported, classify
from coviax_service.jobs import JobManager, LiveJob


class BatchSession:
    """The state of one SubmitBatch stream. ``receive(jobs, job, request)`` takes one data message of a scan;
    ``tenant``: the caller's, owner of the batch's jobs."""

    def __init__(self, jobs: JobManager, receive, tenant: str = ""):
        self.jobs = jobs
        self.receive = receive
        self.tenant = tenant
        self.batch_id = uuid.uuid4().hex[:16]
        self.index = -1  # the scan being received
        self.ref = ""  # its client_ref
        self.job: LiveJob | None = None  # its job, while its data is being received
        self.skipping = False  # the rest of the current scan is ignored (rejected, existing, or ended)
        self.accepted = self.rejected = 0

    # ------------------------------------------------------------------ events

    def _accepted(self, job_id: str, existing: bool = False) -> pb.BatchEvent:
        self.accepted += 1
        return pb.BatchEvent(scan_index=self.index, client_ref=self.ref, accepted=pb.Accepted(
            job_id=job_id, existing=existing, batch_id=self.batch_id))

    def _rejected(self, exc: BaseException | None = None, job: LiveJob | None = None,
                  index: int | None = None) -> pb.BatchEvent:
        """A rejection for ``exc``, or for the failure already recorded on ``job``."""
        self.rejected += 1
        self.skipping = True
        code, message = (job.error_code, job.error_message) if job is not None else classify(exc)
        return pb.BatchEvent(scan_index=self.index if index is None else index, client_ref=self.ref,
                             rejected=pb.Rejected(code=code, message=message))

    # ------------------------------------------------------------------ the stream

    async def handle(self, request) -> list[pb.BatchEvent]:
        """The events one request message gives (none, or the answer of the scan it ends or refuses)."""
        which = request.WhichOneof("item") if isinstance(request, pb.SegmentRequest) else None
        if which == "header":
            events = await self._close_scan()
            return events + await self._open_scan(request.header)
        if which == "end":
            events = await self._close_scan()
            self.skipping = True
            return events
        if self.skipping:
            return []
        if self.job is None:
            self.ref = ""
            error = request.error() if isinstance(request, Malformed) else Unsupported(
                "scan data before its Header; each scan of a batch starts with a Header")
            return [self._rejected(error, index=max(self.index, 0))]
        job = self.job
        try:
            await self.receive(self.jobs, job, request)
        except Exception as exc:
            self.job = None
            await self.jobs.fail(job, exc)
            return [self._rejected(job=job)]
        return []

    async def _open_scan(self, header: pb.Header) -> list[pb.BatchEvent]:
        self.index += 1
        self.ref = header.client_ref
        self.batch_id = header.batch_id or self.batch_id
        self.skipping = False
        try:
            admitted, existing = await self.jobs.admit(request_from_header(header, self.tenant), streaming=False,
                                                       batch_id=self.batch_id)
        except Exception as exc:
            return [self._rejected(exc)]
        if existing:
            self.skipping = True
            job_id = admitted.job_id if isinstance(admitted, LiveJob) else admitted["job_id"]
            return [self._accepted(job_id, existing=True)]
        self.job = admitted
        return []

    async def _close_scan(self) -> list[pb.BatchEvent]:
        job, self.job = self.job, None
        if job is None:
            return []
        try:
            await self.jobs.complete_upload(job)
        except Exception as exc:
            await self.jobs.fail(job, exc)
            return [self._rejected(job=job)]
        return [self._accepted(job.job_id)]

    async def finish(self) -> list[pb.BatchEvent]:
        """The client half-closed: the last scan's answer and ``done``."""
        events = await self._close_scan()
        return events + [pb.BatchEvent(scan_index=self.index + 1, done=pb.BatchDone(
            batch_id=self.batch_id, accepted=self.accepted, rejected=self.rejected))]

    def on_rpc_done(self, loop: asyncio.AbstractEventLoop):
        """A gRPC done-callback: the stream ended (client gone) during a scan's upload -> that job is cancelled."""

        def callback(_context) -> None:
            current = self.job
            if current is not None and not current.upload_complete:
                loop.call_soon_threadsafe(self.jobs.spawn, self.jobs.on_stream_gone(
                    current, "the batch stream ended during this scan's upload"))

        return callback

    async def abandon(self) -> None:
        """The handler ends (normally or not): a scan still uploading is cancelled."""
        job = self.job
        if job is not None and not job.upload_complete:
            await asyncio.shield(self.jobs.on_stream_gone(job, "the batch stream ended during this scan's upload"))
