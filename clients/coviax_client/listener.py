"""``coviax-client dicom-listener``: a DICOM C-STORE SCP in front of the COViaX service.

A scanner or PACS pushes a series to ``AE_TITLE@host:port``. The listener
writes each instance under ``OUT/incoming/SERIES_KEY/`` and, when the series
is *complete* -- no association is sending to it any more and no new
instance arrived for ``idle_seconds`` after the last association release --
submits it with the SDK and writes the result to ``OUT/SERIES_KEY/``
(report.json, labels.nii.gz, seg.dcm, montage.png, ..., or ``error.txt``); a series pushed again
with other content is analysed again from an empty folder, the last run's files moved to
``OUT/SERIES_KEY/previous/``.
With a PACS node or a DICOMweb URL configured (:mod:`coviax_client.sender`)
the SEG, SR and Secondary Capture then go back by C-STORE or STOW-RS.

What it accepts (docs/CONFORMANCE.md is the full statement):

- **Who.** Associations are rejected (A-ASSOCIATE-RJ) unless the peer address
  is in ``allowed_peers`` (default: loopback only), the calling AE title in
  ``allowed_calling`` (empty = any) and the called AE title in
  ``allowed_called`` (default: our own title). The default bind is 127.0.0.1.
  Optional DICOM TLS (``ssl_context``).
- **What.** Every storage SOP class is negotiated, with the uncompressed transfer
  syntaxes and every compressed one the COViaX reader decodes (JPEG Lossless,
  JPEG-LS, JPEG 2000, RLE), so pushing a whole study never fails. Instances
  that :class:`RoutingRules` turn away (by default anything that is not CT, e.g.
  our own SEG/SR/SC coming back, or a localizer) are acknowledged and
  discarded; a complete series with fewer than ``min_slices`` instances is
  not submitted (``OUT/SERIES_KEY/skipped.txt`` says why).
- **Re-pushes.** A complete series gets a content key: the SHA-256 over its
  SOP Instance UIDs and the SHA-256 of each instance's pixel data. A re-push
  with the same key is not processed again; one whose images differ is, even
  with the same UID and image count.
- **Restarts.** Each instance is written to a temporary name and renamed, so
  ``incoming/`` holds only whole files. On SIGTERM (``coviax-client`` turns it
  into :meth:`DicomListener.stop`) the server stops accepting, submissions in
  progress get ``grace_seconds`` to finish, and everything not yet processed
  stays in ``incoming/``; the next start resumes it (a resubmitted series has
  the same idempotency key, so the service returns the job it already has).

``SERIES_KEY`` is ``series-`` + the first 16 hex digits of the SHA-256 of
the SeriesInstanceUID: no patient identifier appears in a folder name or a
log line. The received files are removed once the series has been processed
(``keep_incoming`` keeps them).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from coviax_client.routing import PeerFilter, RoutingRules

log = logging.getLogger("coviax_client.listener")

#: Uncompressed transfer syntaxes: Implicit VR LE, Explicit VR LE, Deflated Explicit VR LE, Explicit VR BE.
UNCOMPRESSED_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2")
#: Compressed transfer syntaxes the COViaX reader decodes (pylibjpeg plugins; README "The command line").
COMPRESSED_SYNTAXES = (
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, First-Order Prediction (Process 14, SV1)
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
)
ACCEPTED_SYNTAXES = UNCOMPRESSED_SYNTAXES + COMPRESSED_SYNTAXES

# A-ASSOCIATE-RJ (result: rejected-permanent, source: service user) diagnostics.
_RJ_NO_REASON, _RJ_CALLING, _RJ_CALLED = 0x01, 0x03, 0x07


@dataclass
class _Series:
    key: str
    folder: Path
    instances: int = 0
    ignored: dict = field(default_factory=dict)  # reason -> count
    active: set = field(default_factory=set)  # associations still sending to it
    last_activity: float = field(default_factory=time.monotonic)
    submitted: bool = False


def series_key(series_uid: str) -> str:
    return "series-" + hashlib.sha256(series_uid.encode()).hexdigest()[:16]


def content_key(folder: Path) -> str:
    """SHA-256 over the sorted (SOP Instance UID, SHA-256 of the pixel data) of every instance in ``folder``.

    The pixel data is hashed as stored (compressed or not); an instance without pixel data hashes its
    whole encoded file. Raises ValueError naming the file that pydicom cannot parse.
    """
    import pydicom

    parts = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".dcm"):
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:
            raise ValueError(f"{path.name}: not a readable DICOM file ({exc.__class__.__name__})") from None
        pixels = ds.get("PixelData")
        digest = hashlib.sha256(pixels if pixels is not None else path.read_bytes()).hexdigest()
        parts.append(f"{ds.get('SOPInstanceUID', path.name)}:{digest}")
    return hashlib.sha256("\n".join(sorted(parts)).encode()).hexdigest()


class DicomListener:
    """C-STORE SCP that gathers series and hands each complete one to ``submit(folder, key, out_dir, content)``.

    ``submit`` may also take three arguments (folder, key, out_dir), as before content keys existed.
    """

    def __init__(self, ae_title: str, port: int, out_dir, submit: Callable[..., None],
                 idle_seconds: float = 10.0, host: str = "127.0.0.1", keep_incoming: bool = False, parallel: int = 1,
                 rules: RoutingRules | None = None, allowed_calling: Iterable[str] = (),
                 allowed_called: Iterable[str] | None = None, allowed_peers: Iterable[str] = ("127.0.0.1", "::1"),
                 ssl_context=None, grace_seconds: float = 30.0):
        from pynetdicom import AE, StoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        self.out_dir = Path(out_dir)
        self.incoming = self.out_dir / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.submit = submit
        self._submit_takes_content = _arity(submit) >= 4
        self.idle_seconds = idle_seconds
        self.keep_incoming = keep_incoming
        self.rules = rules or RoutingRules()
        self.allowed_calling = {a.strip() for a in allowed_calling if a.strip()}
        self.allowed_called = {a.strip() for a in (allowed_called or [ae_title]) if a.strip()}
        self.peers = PeerFilter(allowed_peers)
        self.ssl_context = ssl_context
        self.grace_seconds = grace_seconds
        self.series: dict[str, _Series] = {}
        self._busy: set[Path] = set()  # incoming folders handed to a submission
        self.lock = threading.Lock()
        self.done = threading.Event()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="coviax-submit")
        self.futures = []
        self.ae = AE(ae_title=ae_title)
        for cx in StoragePresentationContexts:
            self.ae.add_supported_context(cx.abstract_syntax, list(ACCEPTED_SYNTAXES))
        self.ae.add_supported_context(Verification, list(UNCOMPRESSED_SYNTAXES[:2]))
        self.ae.maximum_pdu_size = 0
        self._handlers = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_assoc_end),
            (evt.EVT_ABORTED, self._on_assoc_end),
            (evt.EVT_CONN_CLOSE, self._on_assoc_end),
        ]
        self.host, self.port = host, port
        self._server = None
        self._monitor = threading.Thread(target=self._watch, name="coviax-listener-watch", daemon=True)

    def start(self) -> "DicomListener":
        resumed = self._resume_incoming()
        self._server = self.ae.start_server((self.host, self.port), block=False, evt_handlers=self._handlers,
                                            ssl_context=self.ssl_context)
        self.port = self._server.server_address[1]
        self._monitor.start()
        log.info("listening for C-STORE as %s on %s:%d%s; %d series resumed from incoming/", self.ae.ae_title,
                 self.host, self.port, " (TLS)" if self.ssl_context else "", resumed)
        return self

    def stop(self, grace_seconds: float | None = None) -> None:
        """Stop accepting, give running submissions ``grace_seconds``, leave the rest in ``incoming/``."""
        grace = self.grace_seconds if grace_seconds is None else grace_seconds
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        self._monitor.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + grace
        for future in list(self.futures):
            if future.cancelled():
                continue
            try:
                future.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:
                pass
        with self.lock:
            pending = [s.key for s in self.series.values()]
        unfinished = sum(1 for f in self.futures if not f.done())
        if pending or unfinished:
            log.info("stopped: %d series waiting and %d in submission stay in incoming/ for the next start",
                     len(pending), unfinished)
        else:  # said too when the grace sufficed: an operator reading the log knows nothing was left behind
            log.info("stopped: every submission finished within the %g s grace; nothing left in incoming/", grace)

    # ------------------------------------------------------------ handlers

    def _on_requested(self, event) -> None:
        """Reject an association from a peer, calling or called AE title that is not allowed."""
        assoc = event.assoc
        address = str(assoc.requestor.address)
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        called = str(assoc.requestor.primitive.called_ae_title).strip()
        reason = None
        if not self.peers.allows(address):
            reason, diagnostic = f"peer address {address} not allowed", _RJ_NO_REASON
        elif self.allowed_calling and calling not in self.allowed_calling:
            reason, diagnostic = f"calling AE title {calling!r} not allowed", _RJ_CALLING
        elif called not in self.allowed_called:
            reason, diagnostic = f"called AE title {called!r} is not one of {sorted(self.allowed_called)}", _RJ_CALLED
        if reason:
            log.warning("association rejected: %s", reason)
            # as pynetdicom's own ACSE does for its checks: A-ASSOCIATE-RJ, then stop the DUL once it is sent
            assoc.acse.send_reject(0x01, 0x01, diagnostic)
            assoc.kill()

    def _on_store(self, event) -> int:
        try:
            ds = event.dataset
            uid = str(getattr(ds, "SeriesInstanceUID", "")) or "no-series-uid"
            sop = str(getattr(ds, "SOPInstanceUID", "")) or f"{time.time_ns()}"
        except Exception:  # undecodable: refuse this instance
            return 0xC210  # Cannot understand
        if self._stop.is_set():
            return 0xA700  # shutting down: the sender keeps the instance and may retry
        key = series_key(uid)
        refused = self.rules.refuse(ds)
        with self.lock:
            series = self.series.get(key)
            if series is None or series.submitted:
                folder = self.incoming / key
                if folder in self._busy:  # a re-push while the last push is processed: a folder of its own
                    folder = self.incoming / f"{key}~{time.time_ns()}"
                series = _Series(key, folder)
                self.series[key] = series
            series.active.add(id(event.assoc))
            series.last_activity = time.monotonic()
            if refused:
                series.ignored[refused] = series.ignored.get(refused, 0) + 1
                return 0x0000  # acknowledged, not for us (see RoutingRules)
        name = hashlib.sha256(sop.encode()).hexdigest()[:24] + ".dcm"
        try:
            series.folder.mkdir(parents=True, exist_ok=True)
            part = series.folder / (name + ".part")
            part.write_bytes(event.encoded_dataset())
            os.replace(part, series.folder / name)  # incoming/ only ever holds whole files
        except OSError:
            return 0xA700  # Out of resources
        with self.lock:
            series.instances += 1
        return 0x0000

    def _on_assoc_end(self, event) -> None:
        assoc = id(event.assoc)
        now = time.monotonic()
        with self.lock:
            for series in self.series.values():
                if assoc in series.active:
                    series.active.discard(assoc)
                    series.last_activity = now

    # -------------------------------------------------------------- watcher

    def _resume_incoming(self) -> int:
        """Register every series left in ``incoming/`` by an earlier run (dropping half-written files)."""
        count = 0
        for folder in sorted(p for p in self.incoming.iterdir() if p.is_dir()):
            for part in folder.glob("*.part"):
                part.unlink(missing_ok=True)
            files = [p for p in folder.iterdir() if p.suffix == ".dcm"]
            if not files:
                shutil.rmtree(folder, ignore_errors=True)
                continue
            key = folder.name.split("~")[0]
            with self.lock:
                earlier = self.series.get(key)
                if earlier is not None:
                    # two pushes of one series were waiting (a re-push came while the first was processed):
                    # one series, the later push's copy of an instance winning (folders sort by arrival)
                    for f in files:
                        os.replace(f, earlier.folder / f.name)
                    shutil.rmtree(folder, ignore_errors=True)
                    earlier.instances = sum(1 for _ in earlier.folder.glob("*.dcm"))
                    continue
                self.series[key] = _Series(key, folder, instances=len(files))
            count += 1
        return count

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            now = time.monotonic()
            ready = []
            with self.lock:
                for key, series in list(self.series.items()):
                    if not series.submitted and not series.active and now - series.last_activity >= self.idle_seconds:
                        series.submitted = True
                        self._busy.add(series.folder)  # under the same lock as the store handler's check
                        ready.append(series)
                        del self.series[key]
            for series in ready:
                if series.ignored:
                    log.info("%s: %s", series.key, "; ".join(f"{n} instance(s) discarded: {r}"
                                                               for r, n in series.ignored.items()))
                if series.instances == 0 and not series.folder.exists():
                    continue  # nothing of it was for us
                log.info("%s complete (%d instances)", series.key, series.instances)
                self.futures.append(self._pool.submit(self._submit, series))

    def _submit(self, series: _Series) -> None:
        out = self.out_dir / series.key
        out.mkdir(parents=True, exist_ok=True)
        finished = True
        try:
            count = sum(1 for p in series.folder.iterdir() if p.suffix == ".dcm")
            if count < self.rules.min_slices:
                (out / "skipped.txt").write_text(f"{count} instance(s), fewer than the minimum of "
                                                 f"{self.rules.min_slices} (--min-slices); not analysed\n")
                log.info("%s skipped: %d instance(s) < min_slices %d", series.key, count, self.rules.min_slices)
                return
            content = content_key(series.folder)
            done_file = out / "content.txt"
            if done_file.is_file() and done_file.read_text().strip() == content and (out / "job.txt").is_file():
                log.info("%s unchanged since it was processed (content %s); not processed again", series.key, content[:12])
                return
            _set_aside_previous(out, series.key)
            log.info("%s submitting (content %s)", series.key, content[:12])
            if self._submit_takes_content:
                self.submit(series.folder, series.key, out, content)
            else:
                self.submit(series.folder, series.key, out)
            done_file.write_text(content + "\n")
        except Exception as exc:
            if self._stop.is_set():
                # shutting down: the series stays in incoming/ and is resumed on the next start
                finished = False
                log.info("%s interrupted by shutdown; left in incoming/", series.key)
            else:  # written next to the outputs; the listener keeps running
                (out / "error.txt").write_text(f"{exc.__class__.__name__}: {exc}\n")
                log.warning("%s failed: %s", series.key, exc.__class__.__name__)
        finally:
            if finished and not self.keep_incoming:
                shutil.rmtree(series.folder, ignore_errors=True)
            with self.lock:
                self._busy.discard(series.folder)
            self.done.set()


def _set_aside_previous(out: Path, key: str) -> None:
    """A re-analysis starts from an empty result folder: the last run's files (its results, or its
    error.txt / skipped.txt) move to ``previous/``, replacing an older one. So after a failed
    re-analysis error.txt is alone, never beside a report and SEG of other content."""
    files = [p for p in out.iterdir() if p.is_file()]
    if not files:
        return
    previous = out / "previous"
    shutil.rmtree(previous, ignore_errors=True)
    previous.mkdir()
    for path in files:
        path.replace(previous / path.name)
    log.info("%s: the previous run's %d file(s) moved to previous/", key, len(files))


def _arity(func) -> int:
    import inspect

    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return 3
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return 99
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
