"""Results back to the PACS: a persistent outbox (C-STORE or DICOMweb STOW-RS) with retries, backoff,
a dead-letter folder and a ledger.

    sender = ResultSender(PacsNode.parse("ORTHANC@10.0.0.5:4242"), spool_dir="out/pacs")
    sender.enqueue([Path("out/series-.../seg.dcm"), ...])   # copied into spool/outbox/
    sender.start()                                           # a thread sends what is due

- **Presentation contexts** come from the files: each SOP class (SEG, Comprehensive 3D SR, Secondary
  Capture, ...) is proposed once with the file's own transfer syntax and once with the uncompressed
  ones. When the PACS accepts only uncompressed for a class (e.g. no RLE for the Secondary Capture),
  the instance is decompressed (pydicom) and sent that way.
- **DICOMweb.** With a :class:`StowTarget` instead of a :class:`PacsNode` the due instances go in one
  STOW-RS request (``POST {url}/studies``, multipart/related, application/dicom, as stored); the
  response's ReferencedSOPSequence / FailedSOPSequence say which were stored (a 200 without them: all).
- **Retries.** A failed instance (refused association, network error, failure status) is tried again
  after ``backoff_s * 2**(attempts-1)`` seconds (at most ``max_backoff_s``); after ``max_attempts``
  failures it moves to ``spool/dead-letter/`` with a ``.json`` that says why. Nothing is lost on a
  restart: the outbox and the attempt counts are files.
- **Idempotent.** ``spool/sent.txt`` lists every SOP Instance UID the PACS acknowledged (status Success
  or Warning). An instance in it is never queued or sent again; one already in the outbox is not queued
  twice (its file name is a hash of the SOP Instance UID).

Log lines name files by that hash and the PACS by AE title and address; never a patient attribute.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

log = logging.getLogger("coviax_client.sender")

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


class ResultSender:
    def __init__(self, node: "PacsNode | StowTarget", spool_dir, max_attempts: int = 5, backoff_s: float = 5.0,
                 max_backoff_s: float = 600.0, ssl_context=None, timeout_s: float = 30.0):
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        self.node = node
        self.spool = Path(spool_dir)
        self.outbox = self.spool / "outbox"
        self.dead = self.spool / "dead-letter"
        self.ledger = self.spool / "sent.txt"
        for folder in (self.outbox, self.dead):
            folder.mkdir(parents=True, exist_ok=True)
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.ssl_context = ssl_context
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sent = self._read_ledger()

    # ---------------------------------------------------------------- queue

    def _read_ledger(self) -> set[str]:
        if not self.ledger.is_file():
            return set()
        return {line.strip() for line in self.ledger.read_text().splitlines() if line.strip()}

    def was_sent(self, sop_instance_uid: str) -> bool:
        with self._lock:
            return sop_instance_uid in self._sent

    def enqueue(self, paths: Iterable[Path]) -> int:
        """Copy each DICOM file into the outbox unless its SOP Instance UID was sent or is queued; returns how many."""
        import pydicom

        queued = 0
        for path in paths:
            path = Path(path)
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                sop = str(ds.SOPInstanceUID)
            except Exception as exc:
                raise ValueError(f"{path.name}: not a DICOM file with a SOP Instance UID ({exc.__class__.__name__})") from None
            name = _name(sop)
            with self._lock:
                if sop in self._sent or (self.outbox / name).exists() or (self.dead / name).exists():
                    continue
                tmp = self.outbox / (name + ".part")
                shutil.copyfile(path, tmp)
                os.replace(tmp, self.outbox / name)
            queued += 1
        if queued:
            self._wake.set()
        return queued

    def pending(self) -> list[Path]:
        return sorted(self.outbox.glob("*.dcm"))

    def dead_letters(self) -> list[Path]:
        return sorted(self.dead.glob("*.dcm"))

    # ---------------------------------------------------------------- sending

    def send_due(self) -> dict:
        """One pass: send every outbox instance whose backoff has passed, in one association.

        Returns counts ``sent``, ``failed``, ``dead`` and ``waiting``.
        """
        now = time.time()
        due, waiting = [], 0
        for path in self.pending():
            state = self._state(path)
            if state.get("next_try", 0) <= now:
                due.append(path)
            else:
                waiting += 1
        counts = {"sent": 0, "failed": 0, "dead": 0, "waiting": waiting}
        if not due:
            return counts
        import pydicom

        datasets = {}
        for path in due:
            try:
                datasets[path] = pydicom.dcmread(path)
            except Exception as exc:
                self._failed(path, f"unreadable: {exc.__class__.__name__}", counts, permanent=True)
        if not datasets:
            return counts
        if isinstance(self.node, StowTarget):
            self._send_stow(datasets, counts)
            return counts
        try:
            assoc = self._associate(datasets.values())
        except SendError as exc:
            for path in datasets:
                self._failed(path, str(exc), counts)
            return counts
        try:
            for path, ds in datasets.items():
                try:
                    self._store(assoc, ds)
                except SendError as exc:
                    self._failed(path, str(exc), counts)
                    if not assoc.is_established:
                        for rest in list(datasets)[list(datasets).index(path) + 1:]:
                            self._failed(rest, "association lost", counts)
                        break
                    continue
                self._mark_sent(path, str(ds.SOPInstanceUID))
                counts["sent"] += 1
        finally:
            if assoc.is_established:
                assoc.release()
        return counts

    def _send_stow(self, datasets: dict, counts: dict) -> None:
        """One STOW-RS request with every due instance; the response says which were stored."""
        import ssl
        import urllib.error
        import urllib.request
        import uuid

        boundary = "coviax-" + uuid.uuid4().hex
        body = bytearray()
        for path in datasets:
            body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            body += path.read_bytes() + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                   "Accept": "application/dicom+json"}
        if self.node.token:
            headers["Authorization"] = f"Bearer {self.node.token}"
        request = urllib.request.Request(str(self.node), data=bytes(body), headers=headers, method="POST")
        context = ssl.create_default_context(cafile=self.node.ca_file) if self.node.url.startswith("https") else None
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s, context=context) as response:
                status, text = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            for path in datasets:
                self._failed(path, f"cannot reach {self.node}: {exc.__class__.__name__}: {exc}", counts)
            return
        stored, failed = _stow_outcome(text)
        for path, ds in datasets.items():
            sop = str(ds.SOPInstanceUID)
            if sop in stored or (status == 200 and not stored and not failed):
                self._mark_sent(path, sop)
                counts["sent"] += 1
            elif sop in failed:
                self._failed(path, f"{self.node} answered HTTP {status}, failure reason 0x{failed[sop]:04X} "
                                   f"({_status_text(failed[sop])})", counts)
            else:
                self._failed(path, f"{self.node} answered HTTP {status}"
                                   + ("" if status in (200, 202) else f": {text[:200].decode('utf-8', 'replace')}"), counts)


    def _associate(self, datasets):
        from pynetdicom import AE, build_context

        ae = AE(ae_title=self.node.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
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
            kwargs = {"tls_args": (self.ssl_context, self.node.host)} if self.ssl_context else {}
            assoc = ae.associate(self.node.host, self.node.port, contexts=contexts, ae_title=self.node.ae_title, **kwargs)
        except Exception as exc:
            raise SendError(f"cannot reach {self.node}: {exc.__class__.__name__}: {exc}") from None
        if not assoc.is_established:
            if assoc.is_rejected:
                raise SendError(f"{self.node} rejected the association (check its AE title and that it knows "
                                f"{self.node.calling_ae_title!r} as a peer)")
            raise SendError(f"no association with {self.node} (connection refused, aborted or timed out)")
        return assoc

    def _store(self, assoc, ds) -> None:
        sop_class = str(ds.SOPClassUID)
        syntax = str(ds.file_meta.TransferSyntaxUID)
        accepted = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class]
        if not accepted:
            raise SendError(f"{self.node} accepted no presentation context for SOP class {sop_class} "
                            f"({_sop_name(sop_class)})")
        offered = {ts for cx in accepted for ts in cx.transfer_syntax}
        if syntax not in offered:
            if not offered & set(_UNCOMPRESSED):
                raise SendError(f"{self.node} accepted SOP class {_sop_name(sop_class)} only with "
                                f"{', '.join(sorted(offered))}, which we cannot convert to")
            if syntax not in _UNCOMPRESSED:
                # The PACS takes only uncompressed for this class (e.g. no RLE for the SC). RLE is lossless, so the
                # instance is the same: keep its SOP Instance UID (pydicom would make a new one by default).
                ds.decompress(generate_instance_uid=False)
            # between uncompressed syntaxes (explicit <-> implicit VR) pynetdicom re-encodes when it sends
        try:
            status = assoc.send_c_store(ds)
        except Exception as exc:
            raise SendError(f"C-STORE to {self.node} failed: {exc.__class__.__name__}: {exc}") from None
        code = getattr(status, "Status", None)
        if code is None:
            raise SendError(f"no C-STORE response from {self.node} (timeout or association aborted)")
        if int(code) not in _STORED:
            raise SendError(f"{self.node} answered C-STORE with status 0x{int(code):04X} ({_status_text(int(code))})")

    # ---------------------------------------------------------------- bookkeeping

    def _state_path(self, path: Path) -> Path:
        return path.with_suffix(".json")

    def _state(self, path: Path) -> dict:
        try:
            return json.loads(self._state_path(path).read_text())
        except (OSError, ValueError):
            return {}

    def _mark_sent(self, path: Path, sop: str) -> None:
        with self._lock:
            with self.ledger.open("a") as f:
                f.write(sop + "\n")
                f.flush()
                os.fsync(f.fileno())
            self._sent.add(sop)
            path.unlink(missing_ok=True)
            self._state_path(path).unlink(missing_ok=True)
        log.info("%s stored in %s", path.stem, self.node)

    def _failed(self, path: Path, reason: str, counts: dict, permanent: bool = False) -> None:
        state = self._state(path)
        attempts = int(state.get("attempts", 0)) + 1
        state.update(attempts=attempts, last_error=reason, last_try=time.time())
        if permanent or attempts >= self.max_attempts:
            state["dead_lettered"] = time.time()
            self._state_path(path).write_text(json.dumps(state, indent=1))
            os.replace(path, self.dead / path.name)
            os.replace(self._state_path(path), self.dead / self._state_path(path).name)
            counts["dead"] += 1
            log.warning("%s moved to dead-letter/ after %d attempt(s): %s", path.stem, attempts, reason)
            return
        delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempts - 1))
        state["next_try"] = time.time() + delay
        self._state_path(path).write_text(json.dumps(state, indent=1))
        counts["failed"] += 1
        log.warning("%s not stored (attempt %d of %d, next in %.0f s): %s", path.stem, attempts, self.max_attempts,
                    delay, reason)

    # ---------------------------------------------------------------- thread

    def start(self) -> "ResultSender":
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="coviax-sender", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.send_due()
            except Exception as exc:  # never let the thread die; the items stay in the outbox
                log.warning("sender pass failed: %s: %s", exc.__class__.__name__, exc)
            self._wake.wait(timeout=self._next_wait())
            self._wake.clear()

    def _next_wait(self) -> float:
        times = [self._state(p).get("next_try", 0) for p in self.pending()]
        if not times:
            return 5.0
        return max(0.2, min(5.0, min(times) - time.time()))

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the outbox is empty (everything sent or dead-lettered); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.pending():
                return True
            self._wake.set()
            time.sleep(0.2)
        return not self.pending()


def _name(sop_instance_uid: str) -> str:
    return hashlib.sha256(sop_instance_uid.encode()).hexdigest()[:24] + ".dcm"


def _sop_name(uid: str) -> str:
    from pydicom.uid import UID

    return UID(uid).name


def _status_text(code: int) -> str:
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


def _stow_outcome(text: bytes) -> tuple[set[str], dict[str, int]]:
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
