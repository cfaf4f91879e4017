"""How result instances reach a PACS: C-STORE over a DICOM association (:class:`PacsNode`) or one
DICOMweb STOW-RS request (:class:`StowTarget`). :class:`coviax_client.sender.ResultSender` decides
what to send and when; a failure here is a :class:`SendError` whose message says why."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_UNCOMPRESSED = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # Explicit VR LE, Implicit VR LE
#: C-STORE statuses that mean the PACS has the instance: Success and the Warning statuses of PS3.4 B.2.3.
_STORED = {0x0000, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class PacsNode:
    """Where results go: the PACS's AE title, host and port, and the AE title we call it with."""

    ae_title: str
    host: str
    port: int
    calling_ae_title: str = "COVIAX"

    @classmethod
    def parse(cls, text: str, calling_ae_title: str = "COVIAX") -> "PacsNode":
        """``AE@HOST:PORT`` (IPv6 host in brackets: ``AE@[::1]:4242``)."""
        m = re.fullmatch(r"([^@]{1,16})@(\[[^\]]+\]|[^:@\s]+):(\d{1,5})", text.strip())
        if not m:
            raise ValueError(f"PACS node {text!r}: expected AE_TITLE@HOST:PORT, e.g. ORTHANC@10.0.0.5:4242")
        port = int(m.group(3))
        if not 0 < port < 65536:
            raise ValueError(f"PACS node {text!r}: port {port} is out of range")
        return cls(m.group(1).strip(), m.group(2).strip("[]"), port, calling_ae_title)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class StowTarget:
    """A DICOMweb service root (e.g. ``http://pacs:8042/dicom-web``) that takes STOW-RS; optional bearer token and CA."""

    url: str
    token: str | None = None
    ca_file: str | None = None

    def __post_init__(self):
        if not re.match(r"https?://[^/\s]+", self.url or ""):
            raise ValueError(f"STOW-RS URL {self.url!r}: expected http(s)://HOST[:PORT]/PATH, e.g. http://pacs:8042/dicom-web")

    def __str__(self) -> str:
        return self.url.rstrip("/") + "/studies"


class SendError(Exception):
    """An instance could not be stored; the message says why (status or network)."""


def associate(node: PacsNode, datasets, ssl_context=None, timeout_s: float = 30.0):
    """An established association with ``node`` that proposes each dataset's SOP class with its own
    transfer syntax and with the uncompressed ones; SendError if there is none."""
    from pynetdicom import AE, build_context

    ae = AE(ae_title=node.calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    contexts = []
    for ds in datasets:
        sop_class = str(ds.SOPClassUID)
        syntax = str(ds.file_meta.TransferSyntaxUID)
        for wanted in ([syntax] if syntax not in _UNCOMPRESSED else []) + [list(_UNCOMPRESSED)]:
            cx = build_context(sop_class, wanted)
            if all((c.abstract_syntax, tuple(c.transfer_syntax)) != (cx.abstract_syntax, tuple(cx.transfer_syntax))
                   for c in contexts):
                contexts.append(cx)
    if len(contexts) > 128:
        raise SendError(f"{len(contexts)} presentation contexts needed, more than the 128 DICOM allows")
    try:
        kwargs = {"tls_args": (ssl_context, node.host)} if ssl_context else {}
        assoc = ae.associate(node.host, node.port, contexts=contexts, ae_title=node.ae_title, **kwargs)
    except Exception as exc:
        raise SendError(f"cannot reach {node}: {exc.__class__.__name__}: {exc}") from None
    if not assoc.is_established:
        if assoc.is_rejected:
            raise SendError(f"{node} rejected the association (check its AE title and that it knows "
                            f"{node.calling_ae_title!r} as a peer)")
        raise SendError(f"no association with {node} (connection refused, aborted or timed out)")
    return assoc


def c_store(node: PacsNode, assoc, ds) -> None:
    """C-STORE ``ds`` on ``assoc`` (decompressed first when ``node`` takes its class only uncompressed);
    SendError unless the status says the PACS has it."""
    sop_class = str(ds.SOPClassUID)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    accepted = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class]
    if not accepted:
        raise SendError(f"{node} accepted no presentation context for SOP class {sop_class} "
                        f"({sop_name(sop_class)})")
    offered = {ts for cx in accepted for ts in cx.transfer_syntax}
    if syntax not in offered:
        if not offered & set(_UNCOMPRESSED):
            raise SendError(f"{node} accepted SOP class {sop_name(sop_class)} only with "
                            f"{', '.join(sorted(offered))}, which we cannot convert to")
        if syntax not in _UNCOMPRESSED:
            # The PACS takes only uncompressed for this class (e.g. no RLE for the SC). RLE is lossless, so the
            # instance is the same: keep its SOP Instance UID (pydicom would make a new one by default).
            ds.decompress(generate_instance_uid=False)
        # between uncompressed syntaxes (explicit <-> implicit VR) pynetdicom re-encodes when it sends
    try:
        status = assoc.send_c_store(ds)
    except Exception as exc:
        raise SendError(f"C-STORE to {node} failed: {exc.__class__.__name__}: {exc}") from None
    code = getattr(status, "Status", None)
    if code is None:
        raise SendError(f"no C-STORE response from {node} (timeout or association aborted)")
    if int(code) not in _STORED:
        raise SendError(f"{node} answered C-STORE with status 0x{int(code):04X} ({status_text(int(code))})")


def post_stow(target: StowTarget, paths, timeout_s: float = 30.0) -> tuple[int, bytes]:
    """One STOW-RS request (multipart/related, application/dicom, as stored) with the files ``paths``;
    returns the HTTP status and body, or SendError when the server cannot be reached."""
    import ssl
    import urllib.error
    import urllib.request
    import uuid

    boundary = "coviax-" + uuid.uuid4().hex
    body = bytearray()
    for path in paths:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += path.read_bytes() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
               "Accept": "application/dicom+json"}
    if target.token:
        headers["Authorization"] = f"Bearer {target.token}"
    request = urllib.request.Request(str(target), data=bytes(body), headers=headers, method="POST")
    context = ssl.create_default_context(cafile=target.ca_file) if target.url.startswith("https") else None
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        raise SendError(f"cannot reach {target}: {exc.__class__.__name__}: {exc}") from None


def sop_name(uid: str) -> str:
    from pydicom.uid import UID

    return UID(uid).name


def status_text(code: int) -> str:
    if code in (0xA700,) or 0xA700 <= code <= 0xA7FF:
        return "refused: out of resources"
    if 0xA900 <= code <= 0xA9FF:
        return "error: data set does not match SOP class"
    if 0xC000 <= code <= 0xCFFF:
        return "error: cannot understand"
    if code == 0x0122:
        return "refused: SOP class not supported"
    if code == 0x0124:
        return "refused: not authorized"
    return "failure"


def stow_outcome(text: bytes) -> tuple[set[str], dict[str, int]]:
    """SOP Instance UIDs stored and failed (with their FailureReason) from a STOW-RS JSON response (PS3.18 10.5.3)."""
    try:
        body = json.loads(text or b"{}")
    except ValueError:
        return set(), {}
    if isinstance(body, list):
        body = body[0] if body else {}

    def items(tag):
        return (body.get(tag) or {}).get("Value") or []

    def uid(item):
        return ((item.get("00081155") or {}).get("Value") or [""])[0]

    stored = {uid(i) for i in items("00081199")} - {""}
    failed = {uid(i): int(((i.get("00081197") or {}).get("Value") or [0x0110])[0]) for i in items("00081198")}
    failed.pop("", None)
    return stored, failed
