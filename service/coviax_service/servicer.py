"""The ``coviax.v1.Coviax`` RPCs on top of :class:`~coviax_service.jobs.JobManager`.

The job service raises domain exceptions and emits plain data; here they become
gRPC statuses (:func:`status_code` of :func:`coviax_service.errors.classify`, one
mapping) and protobuf messages (:mod:`coviax_service.convert`). The client never
sees a stack trace or a Python exception class, not even for bytes that are not a
valid message (:func:`add_to_server` registers deserializers that never raise).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import weakref

import grpc
from google.protobuf import unknown_fields

from coviax_api.coviax.v1 import coviax_pb2 as pb
from coviax_service.batch import BatchSession
from coviax_service.convert import (
    Malformed,
    artifact_refs,
    job_message,
    model_info_message,
    progress_message,
    request_from_header,
    result_from_report,
    state_name,
)
from coviax_service.errors import InvalidRequest, JobCancelled, Unauthenticated, Unavailable, Unsupported, classify
from coviax_service.jobs import JobManager, LiveJob

log = logging.getLogger("coviax.service")

DOWNLOAD_CHUNK = 1024 * 1024
HALF_CLOSE_GRACE_S = 0.05
SERVICE = pb.DESCRIPTOR.services_by_name["Coviax"]


def status_code(name: str) -> grpc.StatusCode:
    """The gRPC status of a code name of :func:`coviax_service.errors.classify` (or of a job row)."""
    return getattr(grpc.StatusCode, name or "UNKNOWN", grpc.StatusCode.UNKNOWN)


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, job_id: str | None = None):
    code, message = classify(exc, job_id)
    await context.abort(status_code(code), message)


def _answered(handler):
    """A unary RPC whose malformed request or error is answered with its status code (the mapping of
    :func:`coviax_service.errors.classify`), in one place for every such RPC."""

    @functools.wraps(handler)
    async def answer(self, request, context):
        try:
            if isinstance(request, Malformed):
                raise request.error()
            return await handler(self, request, context)
        except Exception as exc:
            await _abort(context, exc)

    return answer


# ---------------------------------------------------------------------------- malformed messages


def _deserializer(message_class):
    name = message_class.DESCRIPTOR.name

    def deserialize(data: bytes):
        try:
            message = message_class.FromString(data)
        except Exception:  # DecodeError, UnicodeDecodeError, ...: answered INVALID_ARGUMENT by the handler
            return Malformed(name)
        if _misencoded_field(message):
            return Malformed(name)
        return message

    return deserialize


def _misencoded_field(message) -> bool:
    """True if a field this API defines arrived with another wire type (e.g. ``page_size`` as bytes).

    protobuf keeps such a field as an *unknown* field and parses the rest, so the call would silently run
    with the field's default (issue 31 item 6). Unknown field numbers stay accepted: a newer client may
    send fields this server does not know yet.
    """
    fields = message.DESCRIPTOR.fields_by_number
    if any(f.field_number in fields for f in unknown_fields.UnknownFieldSet(message)):
        return True
    for field, value in message.ListFields():
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            continue
        items = value if field.is_repeated else [value]
        if any(_misencoded_field(item) for item in items):
            return True
    return False


def add_to_server(servicer: "CoviaxServicer", server) -> None:
    """Register the RPCs (as the generated ``add_CoviaxServicer_to_server``, with deserializers that never raise)."""
    kinds = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
             (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    handlers = {}
    for method in SERVICE.methods:
        request_class = getattr(pb, method.input_type.name)
        response_class = getattr(pb, method.output_type.name)
        make = kinds[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(getattr(servicer, method.name), request_deserializer=_deserializer(request_class),
                                     response_serializer=response_class.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)


async def checked(request_iterator):
    """The messages of a request stream; InvalidRequest at the first one that could not be parsed."""
    async for request in request_iterator:
        if isinstance(request, Malformed):
            raise request.error()
        yield request


async def receive(jobs: JobManager, job: LiveJob, request) -> None:
    """One DicomChunk or RawSlices message of ``job``'s upload."""
    if isinstance(request, Malformed):
        raise request.error()
    which = request.WhichOneof("item")
    if which == "chunk":
        await jobs.receive_chunk(job, request.chunk)
    elif which == "raw":
        await jobs.receive_raw(job, request.raw)
    else:
        raise InvalidRequest(f"unexpected message {which!r} in the upload")


class CoviaxServicer:
    """``tokens``: the server's :class:`~coviax_service.auth.Tokens` (None or empty: no authentication,
    every caller is the tenant "")."""

    def __init__(self, jobs: JobManager, tokens=None):
        self.jobs = jobs
        self.tokens = tokens

    def tenant(self, context) -> str:
        """The caller's tenant (from its bearer token; the interceptor has checked the token already)."""
        if not self.tokens:
            return ""
        tenant = self.tokens.tenant_from_metadata(context.invocation_metadata())
        if tenant is None:
            raise Unauthenticated("unknown bearer token")
        return tenant

    # ------------------------------------------------------------------ Segment

    async def Segment(self, request_iterator, context):
        requests = checked(request_iterator)
        try:
            first = await _next(requests)
            if first is None or first.WhichOneof("item") != "header":
                raise Unsupported("the first message of a Segment stream must be a Header "
                                  f"(got {first.WhichOneof('item') if first is not None else 'nothing'})")
            job, existing = await self.jobs.admit(request_from_header(first.header, self.tenant(context)),
                                                  streaming=True)
        except Exception as exc:
            await _abort(context, exc)
            return
        if existing:
            async for event in self._follow_existing(job, context):
                yield event
            return
        events = job.subscribe()
        finished = False
        loop = asyncio.get_running_loop()

        job_ref = weakref.ref(job)

        def on_rpc_done(_context) -> None:
            # The handler task is not always cancelled when the client goes away (cancel, deadline,
            # broken connection): the end of the RPC is the signal that frees the job's resources.
            # The job is held weakly: grpc keeps this callback after some RPCs that met their deadline
            # as they finished, and a strong reference kept each such job (its report, its worker
            # future) for the server's life, which the soak saw as memory growing.
            live = job_ref()
            if not finished and live is not None:
                loop.call_soon_threadsafe(self.jobs.spawn, self.jobs.on_stream_gone(
                    live, "the client cancelled the stream or its deadline passed"))

        context.add_done_callback(on_rpc_done)  # before the first yield: a cancel may come right after it
        yield pb.SegmentEvent(accepted=pb.Accepted(job_id=job.job_id, batch_id=job.batch_id))
        receiver = asyncio.create_task(self._receive(job, requests, context), name=f"upload-{job.job_id}")
        try:
            async for event in self._events(events, context):
                yield event
            finished = True
        finally:
            job.unsubscribe(events)
            if not receiver.done():
                receiver.cancel()
            if not finished:
                # the client cancelled, its deadline passed, or the connection broke
                await asyncio.shield(self.jobs.on_stream_gone(job, "the client cancelled the stream or its deadline passed"))

    async def _events(self, events: asyncio.Queue, context):
        """SegmentEvents from a job's events until its result (then return) or its error (then abort)."""
        while True:
            kind, *payload = await events.get()
            if kind == "progress":
                yield pb.SegmentEvent(progress=progress_message(payload[0]))
            elif kind == "done":
                job_id, report, artifacts = payload
                yield pb.SegmentEvent(result=result_from_report(job_id, report))
                yield pb.SegmentEvent(artifacts=pb.Artifacts(job_id=job_id, artifacts=artifact_refs(artifacts)))
                return
            else:
                await context.abort(status_code(payload[0]), payload[1])
                return

    async def _receive(self, job: LiveJob, requests, context) -> None:
        try:
            ended = False
            async for request in requests:
                which = request.WhichOneof("item")
                if which == "end":
                    ended = True
                    break
                if which == "header":
                    raise InvalidRequest("a second Header in one Segment stream; send one scan per stream "
                                         "(or several with SubmitBatch)")
                await receive(self.jobs, job, request)
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
            job = await self.jobs.stored(job.job_id)
        if isinstance(job, LiveJob):
            yield pb.SegmentEvent(accepted=pb.Accepted(job_id=job.job_id, existing=True, batch_id=job.batch_id))
            events = job.subscribe()
            try:
                job.emit_progress()
                async for event in self._events(events, context):
                    yield event
            finally:
                job.unsubscribe(events)
            return
        row = job
        yield pb.SegmentEvent(accepted=pb.Accepted(job_id=row["job_id"], existing=True, batch_id=row["batch_id"]))
        if row["state"] == "DONE":
            artifacts = await self.jobs.artifacts(row["job_id"])
            yield pb.SegmentEvent(result=result_from_report(row["job_id"], json.loads(row["report"])))
            yield pb.SegmentEvent(artifacts=pb.Artifacts(job_id=row["job_id"], artifacts=artifact_refs(artifacts)))
            return
        await context.abort(status_code(row["error_code"]), row["error_message"] or f"job {row['job_id']} is {row['state']}")

    # -------------------------------------------------------------- SubmitBatch

    async def SubmitBatch(self, request_iterator, context):
        try:
            tenant = self.tenant(context)
        except Exception as exc:
            await _abort(context, exc)
            return
        session = BatchSession(self.jobs, receive, tenant)
        context.add_done_callback(session.on_rpc_done(asyncio.get_running_loop()))
        try:
            async for request in request_iterator:
                for event in await session.handle(request):
                    yield event
            for event in await session.finish():
                yield event
        finally:
            await session.abandon()

    # ------------------------------------------------------------------ queries

    @_answered
    async def GetJob(self, request, context):
        return job_message(await self.jobs.get_job(request.job_id, self.tenant(context)))

    @_answered
    async def ListJobs(self, request, context):
        try:
            state = state_name(request.state)
        except ValueError:
            raise InvalidRequest(f"state {request.state} is not a JobState; leave it unset for all states") from None
        records, token = await self.jobs.list_jobs(request.batch_id, state, request.page_size, request.page_token,
                                                   self.tenant(context))
        return pb.ListJobsResponse(jobs=[job_message(r, with_result=False) for r in records], next_page_token=token)

    @_answered
    async def CancelJob(self, request, context):
        return job_message(await self.jobs.cancel_by_id(request.job_id, self.tenant(context)))

    async def DownloadArtifact(self, request, context):
        try:
            if isinstance(request, Malformed):
                raise request.error()
            path, ref = await self.jobs.artifact_file(request.job_id, request.name, self.tenant(context))
            size = path.stat().st_size
            if request.offset > size:
                raise InvalidRequest(f"offset {request.offset} is past the end of {ref['file_name']} ({size} bytes)")
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
        if isinstance(request, Malformed):
            await _abort(context, request.error())
        if not self.jobs.ready:
            await _abort(context, Unavailable("the server is warming up; retry in a few seconds"))
        return model_info_message(self.jobs.model_info)


async def _next(iterator):
    try:
        return await iterator.__anext__()
    except StopAsyncIteration:
        return None
