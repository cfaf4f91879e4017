"""Every exception -> status code, in one place (docs/SERVICE.md "Errors").

=====================  =====================================================
INVALID_ARGUMENT       the scan cannot be analysed (core ScanError and its
                       subclasses, with the core's message); a malformed
                       upload or request (chunks out of order, no instances,
                       a message that is not valid protobuf)
FAILED_PRECONDITION    no Header first; options this server cannot meet
                       (unknown option, another engine, cuda absent, U-Net
                       or lungmask without weights)
RESOURCE_EXHAUSTED     concurrent scans, queued slices, scan bytes or slices
                       over the configured limits; the server's disk is full
UNAUTHENTICATED        missing or unknown bearer token
NOT_FOUND              unknown job or artifact, artifact removed by retention
CANCELLED              the job was cancelled (CancelJob or the client went away)
UNAVAILABLE            the server is draining (retry with the same idempotency key)
INTERNAL               a bug: the client gets a reference, the log the traceback
=====================  =====================================================

The job code raises the domain exceptions below (no gRPC in them) and stores
the code *names* in job rows; :func:`classify` is the one mapping from an
exception to a code name and a client-safe message, and
:func:`coviax_service.servicer.status_code` turns a name into a gRPC status.
Messages never carry a stack trace or a Python exception class, and server
paths are replaced by the instance's own name (``instance-00012.dcm``).
"""

from __future__ import annotations

import errno
import logging
import uuid

from coviax.errors import CoviaxError, OptionError, ScanError, WeightsNotFoundError

log = logging.getLogger("coviax.service")

#: Exceptions that must never be turned into a job failure: the process is being stopped.
PROCESS_EXITS = (KeyboardInterrupt, SystemExit, GeneratorExit)


class PortInUseError(CoviaxError, OSError):
    """A port the server must listen on (gRPC or /metrics) cannot be bound: a start-up error that
    ``coviax serve`` prints as one line naming the setting to change, not a traceback."""


class ServiceError(Exception):
    """An error whose status code is chosen where it is raised (``code``: a status code name)."""

    code = "INTERNAL"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidRequest(ServiceError):
    """The request or the upload is malformed, or the scan cannot be analysed."""

    code = "INVALID_ARGUMENT"


class Unsupported(ServiceError):
    """Options this server cannot meet; a request out of order (no Header first, job not DONE)."""

    code = "FAILED_PRECONDITION"


class LimitExceeded(ServiceError):
    """A configured limit (slots, queued slices, bytes, slices) or the disk is full: retry later."""

    code = "RESOURCE_EXHAUSTED"


class WorkerDied(LimitExceeded):
    """The worker process analysing a scan died twice (its memory cap, the out-of-memory killer, a native crash)."""

    def __init__(self, memory_bytes: int):
        cap = f"{memory_bytes / 1024**3:.1f} GiB (COVIAX_WORKER_MEMORY_GB)" if memory_bytes else "no cap"
        super().__init__(f"the process analysing this scan died twice: over the memory a worker may use ({cap}), "
                         "stopped by the out-of-memory killer, or a crash in native code")


class NotFound(ServiceError):
    code = "NOT_FOUND"


class Unavailable(ServiceError):
    """The server is warming up or shutting down."""

    code = "UNAVAILABLE"


class Unauthenticated(ServiceError):
    code = "UNAUTHENTICATED"


class JobCancelled(ServiceError):
    """Raised inside a job (or a worker) once the job is cancelled."""

    code = "CANCELLED"

    def __init__(self, message: str = "the job was cancelled"):
        super().__init__(message)


def classify(exc: BaseException, job_id: str | None = None, strip: tuple[str, ...] = ()) -> tuple[str, str]:
    """The status code name and the client-safe message for ``exc``.

    ``strip``: server path prefixes to remove from core messages (the job's input folder).
    """
    if isinstance(exc, ServiceError):
        return exc.code, _clean(exc.message, strip) or "the job was cancelled"
    if isinstance(exc, ScanError):
        return "INVALID_ARGUMENT", _clean(str(exc), strip)
    if isinstance(exc, (OptionError, WeightsNotFoundError, CoviaxError)):
        return "FAILED_PRECONDITION", _clean(str(exc), strip)
    if isinstance(exc, MemoryError) or _native_out_of_memory(exc):
        return "RESOURCE_EXHAUSTED", ("the scan needs more memory than a worker may use (COVIAX_WORKER_MEMORY_GB) "
                                      "or than the server has free")
    if disk_full(exc):
        log.warning("job %s: no space left on the server's disk", job_id or "-")
        return "RESOURCE_EXHAUSTED", "the server's disk is full; retry later (the same idempotency key makes a new job)"
    reference = uuid.uuid4().hex[:12]
    log.error("internal error %s (job %s)", reference, job_id or "-", exc_info=exc)
    return "INTERNAL", f"internal server error (reference {reference}); the server log has the details"


def _clean(message: str, strip: tuple[str, ...]) -> str:
    for prefix in strip:
        if prefix:
            message = message.replace(prefix.rstrip("/") + "/", "").replace(prefix, "the upload")
    return message


def _native_out_of_memory(exc: BaseException) -> bool:
    """torch (``DefaultCPUAllocator: can't allocate memory``) and ITK (``std::bad_alloc``) report a failed
    allocation as a RuntimeError; under the worker's memory cap that is the scan's size, not a bug."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "bad_alloc" in text)


def disk_full(exc: BaseException) -> bool:
    """ENOSPC or EDQUOT, also wrapped: pydicom's writer re-raises ``OSError("With tag (7FE0,0010) got
    exception: ...")`` without the errno, the original as its ``__cause__``."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False
