"""Every exception -> gRPC status code, in one place (docs/SERVICE.md "Errors").

=====================  =====================================================
INVALID_ARGUMENT       the scan cannot be analysed (core ScanError and its
                       subclasses, with the core's message); a malformed
                       upload (chunks out of order, no instances)
FAILED_PRECONDITION    no Header first; options this server cannot meet
                       (unknown option, another engine, cuda absent, U-Net
                       or lungmask without weights)
RESOURCE_EXHAUSTED     concurrent scans, queued slices, scan bytes or slices
                       over the configured limits
UNAUTHENTICATED        missing or unknown bearer token
NOT_FOUND              unknown job or artifact, artifact removed by retention
CANCELLED              the job was cancelled (CancelJob or the client went away)
UNAVAILABLE            the server is draining (retry with the same idempotency key)
INTERNAL               a bug: the client gets a reference, the log the traceback
=====================  =====================================================

Messages never carry a stack trace, and server paths are replaced by the
instance's own name (``instance-00012.dcm``).
"""

from __future__ import annotations

import logging
import uuid

import grpc

from coviax.errors import CoviaxError, OptionError, ScanError, WeightsNotFoundError

log = logging.getLogger("coviax.service")


class ServiceError(Exception):
    """An error with its status code chosen where it is raised."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class JobCancelled(Exception):
    """Raised inside a job (or a worker) once the job is cancelled."""


def invalid(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, message)


def precondition(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, message)


def exhausted(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def not_found(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, message)


def unavailable(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, message)


def to_status(exc: BaseException, job_id: str | None = None, strip: tuple[str, ...] = ()) -> tuple[grpc.StatusCode, str]:
    """The status code and the client-safe message for ``exc``.

    ``strip``: server path prefixes to remove from core messages (the job's input folder).
    """
    if isinstance(exc, ServiceError):
        return exc.code, _clean(exc.message, strip)
    if isinstance(exc, ScanError):
        return grpc.StatusCode.INVALID_ARGUMENT, _clean(str(exc), strip)
    if isinstance(exc, (OptionError, WeightsNotFoundError)):
        return grpc.StatusCode.FAILED_PRECONDITION, _clean(str(exc), strip)
    if isinstance(exc, CoviaxError):
        return grpc.StatusCode.FAILED_PRECONDITION, _clean(str(exc), strip)
    if isinstance(exc, JobCancelled):
        return grpc.StatusCode.CANCELLED, str(exc) or "the job was cancelled"
    if isinstance(exc, MemoryError):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, "the server ran out of memory for this scan"
    reference = uuid.uuid4().hex[:12]
    log.error("internal error %s (job %s)", reference, job_id or "-", exc_info=exc)
    return grpc.StatusCode.INTERNAL, f"internal server error (reference {reference}); the server log has the details"


def _clean(message: str, strip: tuple[str, ...]) -> str:
    for prefix in strip:
        if prefix:
            message = message.replace(prefix.rstrip("/") + "/", "").replace(prefix, "the upload")
    return message
