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
import shutil
import threading
import time
from pathlib import Path
from typing import Iterable

from coviax_client.transport import (
    PacsNode, SendError, StowTarget, associate, c_store, post_stow, status_text, stow_outcome,
)

log = logging.getLogger("coviax_client.sender")



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
            assoc = associate(self.node, datasets.values(), self.ssl_context, self.timeout_s)
        except SendError as exc:
            for path in datasets:
                self._failed(path, str(exc), counts)
            return counts
        try:
            for path, ds in datasets.items():
                try:
                    c_store(self.node, assoc, ds)
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
        try:
            status, text = post_stow(self.node, list(datasets), self.timeout_s)
        except SendError as exc:
            for path in datasets:
                self._failed(path, str(exc), counts)
            return
        stored, failed = stow_outcome(text)
        for path, ds in datasets.items():
            sop = str(ds.SOPInstanceUID)
            if sop in stored or (status == 200 and not stored and not failed):
                self._mark_sent(path, sop)
                counts["sent"] += 1
            elif sop in failed:
                self._failed(path, f"{self.node} answered HTTP {status}, failure reason 0x{failed[sop]:04X} "
                                   f"({status_text(failed[sop])})", counts)
            else:
                self._failed(path, f"{self.node} answered HTTP {status}"
                                   + ("" if status in (200, 202) else f": {text[:200].decode('utf-8', 'replace')}"), counts)

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
