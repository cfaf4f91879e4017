"""The ``coviax.v1.Coviax`` RPCs on top of :class:`~coviax_service.jobs.JobManager`.

Every handler turns exceptions into a status with :func:`coviax_service.errors.to_status`
(one place); the client never sees a stack trace.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid

import grpc

from coviax_api.coviax.v1 import coviax_pb2 as pb
from coviax_api.coviax.v1 import coviax_pb2_grpc as pb_grpc
from coviax_service.convert import artifact_refs, result_from_report
from coviax_service.errors import JobCancelled, invalid, precondition, to_status
from coviax_service.jobs import JobManager, LiveJob

log = logging.getLogger("coviax.service")

DOWNLOAD_CHUNK = 1024 * 1024
HALF_CLOSE_GRACE_S = 0.05


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, job_id: str | None = None):
    code, message = to_status(exc, job_id)
    await context.abort(code, message)


class CoviaxServicer(pb_grpc.CoviaxServicer):
    def __init__(self, jobs: JobManager):
        self.jobs = jobs

    # ------------------------------------------------------------------ Segment

    async def Segment(self, request_iterator, context):
        try:
            first = await _next(request_iterator)
            if first is None or first.WhichOneof("item") != "header":
                raise precondition("the first message of a Segment stream must be a Header "
                                   f"(got {first.WhichOneof('item') if first is not None else 'nothing'})")
            job, existing = await self.jobs.admit(first.header, streaming=True)
        except Exception as exc:
            await _abort(context, exc)
            return
        if existing:
            async for event in self._follow_existing(job, context):
                yield event
            return
        events = self.jobs.subscribe(job)
        finished = False
        loop = asyncio.get_running_loop()

        def on_rpc_done(_context) -> None:
            # The handler task is not always cancelled when the client goes away (cancel, deadline,
            # broken connection): the end of the RPC is the signal that frees the job's resources.
            if not finished:
                loop.call_soon_threadsafe(self.jobs.spawn, self.jobs.on_stream_gone(
                    job, "the client cancelled the stream or its deadline passed"))

        context.add_done_callback(on_rpc_done)  # before the first yield: a cancel may come right after it
        yield pb.SegmentEvent(accepted=pb.Accepted(job_id=job.job_id, batch_id=job.batch_id))
        receiver = asyncio.create_task(self._receive(job, request_iterator, context), name=f"upload-{job.job_id}")
        try:
            while True:
                kind, *payload = await events.get()
                if kind == "progress":
                    yield pb.SegmentEvent(progress=payload[0])
                elif kind == "done":
                    result, artifacts = payload
                    yield pb.SegmentEvent(result=result)
                    yield pb.SegmentEvent(artifacts=artifacts)
                    finished = True
                    return
                elif kind == "error":
                    finished = True
                    await context.abort(payload[0], payload[1])
                    return
        finally:
            self.jobs.unsubscribe(job, events)
            if not receiver.done():
                receiver.cancel()
            if not finished:
                # the client cancelled, its deadline passed, or the connection broke
                await asyncio.shield(self.jobs.on_stream_gone(job, "the client cancelled the stream or its deadline passed"))

    async def _receive(self, job: LiveJob, request_iterator, context) -> None:
        try:
            ended = False
            async for request in request_iterator:
                which = request.WhichOneof("item")
                if which == "end":
                    ended = True
                    break
                if which == "header":
                    raise invalid("a second Header in one Segment stream; send one scan per stream "
                                  "(or several with SubmitBatch)")
                await self.jobs.receive(job, request)
            if not ended:
                # The request stream also ends when the client cancels; a cancelled RPC is done a
                # moment later, a half-closed one is not (clients that send EndOfScan skip this wait).
                await asyncio.sleep(HALF_CLOSE_GRACE_S)
                if context.done():
                    raise JobCancelled("the client cancelled the stream or its deadline passed")
            await self.jobs.complete_upload(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self.jobs.fail(job, exc)

    async def _follow_existing(self, job, context):
        """Events of the job an idempotency key names: live, or its stored outcome."""
        if isinstance(job, LiveJob) and job.terminal:  # finished a moment ago: its row has the outcome
            job = await self.jobs.store.call(self.jobs.store.get, job.job_id)
        if isinstance(job, LiveJob):
            yield pb.SegmentEvent(accepted=pb.Accepted(job_id=job.job_id, existing=True, batch_id=job.batch_id))
            events = self.jobs.subscribe(job)
            try:
                self.jobs._progress(job)
                while True:
                    kind, *payload = await events.get()
                    if kind == "progress":
                        yield pb.SegmentEvent(progress=payload[0])
                    elif kind == "done":
                        yield pb.SegmentEvent(result=payload[0])
                        yield pb.SegmentEvent(artifacts=payload[1])
                        return
                    else:
                        await context.abort(payload[0], payload[1])
                        return
            finally:
                self.jobs.unsubscribe(job, events)
        row = job
        yield pb.SegmentEvent(accepted=pb.Accepted(job_id=row["job_id"], existing=True, batch_id=row["batch_id"]))
        if row["state"] == "DONE":
            artifacts = await self.jobs.store.call(self.jobs.store.artifacts, row["job_id"])
            yield pb.SegmentEvent(result=result_from_report(row["job_id"], json.loads(row["report"])))
            yield pb.SegmentEvent(artifacts=pb.Artifacts(job_id=row["job_id"], artifacts=artifact_refs(artifacts)))
            return
        code = getattr(grpc.StatusCode, row["error_code"] or "UNKNOWN", grpc.StatusCode.UNKNOWN)
        await context.abort(code, row["error_message"] or f"job {row['job_id']} is {row['state']}")

    # -------------------------------------------------------------- SubmitBatch

    async def SubmitBatch(self, request_iterator, context):
        batch_id = uuid.uuid4().hex[:16]
        index, job, skipping = -1, None, False
        accepted = rejected = 0
        ref = ""

        async def close_scan():
            nonlocal job, accepted, rejected
            current, job = job, None
            if current is None:
                return None
            try:
                await self.jobs.complete_upload(current)
            except Exception as exc:
                await self.jobs.fail(current, exc)
                code, message = to_status(exc, current.job_id)
                rejected += 1
                return pb.BatchEvent(scan_index=index, client_ref=ref,
                                     rejected=pb.Rejected(code=code.name, message=message))
            accepted += 1
            return pb.BatchEvent(scan_index=index, client_ref=ref,
                                 accepted=pb.Accepted(job_id=current.job_id, batch_id=current.batch_id))

        loop = asyncio.get_running_loop()

        def on_rpc_done(_context) -> None:
            current = job
            if current is not None and not current.upload_complete:
                loop.call_soon_threadsafe(self.jobs.spawn, self.jobs.on_stream_gone(
                    current, "the batch stream ended during this scan's upload"))

        context.add_done_callback(on_rpc_done)
        try:
            async for request in request_iterator:
                which = request.WhichOneof("item")
                if which == "header":
                    event = await close_scan()
                    if event is not None:
                        yield event
                    index += 1
                    ref = request.header.client_ref
                    batch_id = request.header.batch_id or batch_id
                    skipping = False
                    try:
                        admitted, existing = await self.jobs.admit(request.header, streaming=False, batch_id=batch_id)
                    except Exception as exc:
                        code, message = to_status(exc)
                        rejected += 1
                        skipping = True
                        yield pb.BatchEvent(scan_index=index, client_ref=ref,
                                            rejected=pb.Rejected(code=code.name, message=message))
                        continue
                    if existing:
                        accepted += 1
                        skipping = True
                        job_id = admitted.job_id if isinstance(admitted, LiveJob) else admitted["job_id"]
                        yield pb.BatchEvent(scan_index=index, client_ref=ref,
                                            accepted=pb.Accepted(job_id=job_id, existing=True, batch_id=batch_id))
                        continue
                    job = admitted
                elif which == "end":
                    event = await close_scan()
                    if event is not None:
                        yield event
                    skipping = True
                elif skipping:
                    continue
                elif job is None:
                    rejected += 1
                    skipping = True
                    code, message = to_status(precondition("scan data before its Header; each scan of a batch "
                                                           "starts with a Header"))
                    yield pb.BatchEvent(scan_index=max(index, 0), rejected=pb.Rejected(code=code.name, message=message))
                else:
                    try:
                        await self.jobs.receive(job, request)
                    except Exception as exc:
                        await self.jobs.fail(job, exc)
                        code, message = to_status(exc, job.job_id)
                        job, skipping = None, True
                        rejected += 1
                        yield pb.BatchEvent(scan_index=index, client_ref=ref,
                                            rejected=pb.Rejected(code=code.name, message=message))
            event = await close_scan()
            if event is not None:
                yield event
            yield pb.BatchEvent(scan_index=index + 1, done=pb.BatchDone(batch_id=batch_id, accepted=accepted,
                                                                         rejected=rejected))
        finally:
            if job is not None and not job.upload_complete:
                await asyncio.shield(self.jobs.on_stream_gone(job, "the batch stream ended during this scan's upload"))

    # ------------------------------------------------------------------ queries

    async def GetJob(self, request, context):
        try:
            return await self.jobs.get_job(request.job_id)
        except Exception as exc:
            await _abort(context, exc)

    async def ListJobs(self, request, context):
        try:
            state = pb.JobState.Name(request.state) if request.state else ""
            return await self.jobs.list_jobs(request.batch_id, state, request.page_size, request.page_token)
        except Exception as exc:
            await _abort(context, exc)

    async def CancelJob(self, request, context):
        try:
            return await self.jobs.cancel_by_id(request.job_id)
        except Exception as exc:
            await _abort(context, exc)

    async def DownloadArtifact(self, request, context):
        try:
            path, ref = await self.jobs.artifact_file(request.job_id, request.name)
            size = path.stat().st_size
            if request.offset > size:
                raise invalid(f"offset {request.offset} is past the end of {ref['file_name']} ({size} bytes)")
        except Exception as exc:
            await _abort(context, exc)
            return
        first = True
        with open(path, "rb") as f:
            f.seek(request.offset)
            offset = request.offset
            while True:
                data = await asyncio.to_thread(f.read, DOWNLOAD_CHUNK)
                if not data and not first:
                    break
                chunk = pb.ArtifactChunk(offset=offset, data=data)
                if first:
                    chunk.total_size, chunk.sha256, chunk.file_name = size, ref["sha256"], ref["file_name"]
                    first = False
                yield chunk
                offset += len(data)
                if not data:
                    break

    async def GetModelInfo(self, request, context):
        if not self.jobs.ready:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the server is warming up; retry in a few seconds")
        return self.jobs.model_info


async def _next(iterator):
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return None


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
