"""What the fuzz harnesses call, without atheris: also replayed by tests/test_fuzz_regressions.py.

Each target takes bytes and may only return or raise the named errors a client is shown
(the core's ScanError, the service's domain errors, OptionError); anything else is a finding.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

ALLOWED = ()  # filled lazily: importing the core is slow, and atheris imports this before instrumenting


def _allowed():
    global ALLOWED
    if not ALLOWED:
        from coviax.errors import OptionError, ScanError
        from coviax_service.errors import ServiceError

        ALLOWED = (ScanError, ServiceError, OptionError)
    return ALLOWED


_TMP = Path(tempfile.mkdtemp(prefix="coviax-fuzz-"))


def scan_file(data: bytes) -> None:
    """One file through the DICOM reader and the HU conversion, as an uploaded instance goes."""
    from coviax.io import slice_to_hu
    from coviax.io.dicom_file import read_dicom_file

    path = _TMP / f"instance-{os.getpid()}.dcm"
    path.write_bytes(data)
    try:
        ds = read_dicom_file(path, "instance-00000.dcm")
        if ds is not None:
            slice_to_hu(ds, "instance-00000.dcm")
    except _allowed():
        pass


def request(data: bytes) -> None:
    """Bytes as every RPC's request: parsed by the servicer's deserializers (never raise), and a Header
    turned into a job's options the way admission does."""
    from coviax_api.coviax.v1 import coviax_pb2 as pb
    from coviax_service.convert import Malformed, request_from_header
    from coviax_service.jobs.model import JobOptions
    from coviax_service.servicer import SERVICE, _deserializer

    for method in SERVICE.methods:
        message = _deserializer(getattr(pb, method.input_type.name))(data)
        if isinstance(message, Malformed):
            message.error()
            continue
        if isinstance(message, pb.SegmentRequest) and message.WhichOneof("item") == "header":
            try:
                JobOptions.resolve(request_from_header(message.header), engine="kmeans", lungs="classical",
                                   device="cpu", model="kmeans:unsupervised")
            except _allowed():
                pass


TARGETS = {"scan": scan_file, "request": request}
