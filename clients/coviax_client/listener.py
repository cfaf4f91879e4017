"""``coviax-client dicom-listener``: a DICOM C-STORE SCP in front of the COViaX service.

A scanner or PACS pushes a series to ``AE_TITLE@host:port``. The listener
writes each instance under ``OUT/incoming/SERIES_KEY/`` and, when the series
is *complete* -- no association is sending to it any more and no new
instance arrived for ``idle_seconds`` after the last association release --
submits it with the SDK and writes the result to ``OUT/SERIES_KEY/``
(report.json, labels.nii.gz, seg.dcm, montage.png, or ``error.txt``).

``SERIES_KEY`` is ``series-`` + the first 16 hex digits of the SHA-256 of
the SeriesInstanceUID: no patient identifier appears in a folder name or a
log line. The received files are removed once the series has been submitted
(``keep_incoming`` keeps them).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

log = logging.getLogger("coviax_client.listener")


@dataclass
class _Series:
    key: str
    folder: Path
    instances: int = 0
    active: set = field(default_factory=set)  # associations still sending to it
    last_activity: float = field(default_factory=time.monotonic)
    submitted: bool = False


def series_key(series_uid: str) -> str:
    return "series-" + hashlib.sha256(series_uid.encode()).hexdigest()[:16]


class DicomListener:
    """C-STORE SCP that gathers series and hands each complete one to ``submit(folder, key, out_dir)``."""

    def __init__(self, ae_title: str, port: int, out_dir, submit: Callable[[Path, str, Path], None],
                 idle_seconds: float = 10.0, host: str = "0.0.0.0", keep_incoming: bool = False, parallel: int = 1):
        from pynetdicom import AE, StoragePresentationContexts, VerificationPresentationContexts, evt

        self.out_dir = Path(out_dir)
        self.incoming = self.out_dir / "incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.submit = submit
        self.idle_seconds = idle_seconds
        self.keep_incoming = keep_incoming
        self.series: dict[str, _Series] = {}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="coviax-submit")
        self.futures = []
        self.ae = AE(ae_title=ae_title)
        self.ae.supported_contexts = StoragePresentationContexts + VerificationPresentationContexts
        self.ae.maximum_pdu_size = 0
        self._handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_assoc_end),
            (evt.EVT_ABORTED, self._on_assoc_end),
            (evt.EVT_CONN_CLOSE, self._on_assoc_end),
        ]
        self.host, self.port = host, port
        self._server = None
        self._monitor = threading.Thread(target=self._watch, name="coviax-listener-watch", daemon=True)

    def start(self) -> "DicomListener":
        self._server = self.ae.start_server((self.host, self.port), block=False, evt_handlers=self._handlers)
        self.port = self._server.server_address[1]
        self._monitor.start()
        log.info("listening for C-STORE as %s on port %d", self.ae.ae_title, self.port)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        self._monitor.join(timeout=5)
        self._pool.shutdown(wait=True)

    # ------------------------------------------------------------ handlers

    def _on_store(self, event) -> int:
        try:
            ds = event.dataset
            uid = str(getattr(ds, "SeriesInstanceUID", "")) or "no-series-uid"
            sop = str(getattr(ds, "SOPInstanceUID", "")) or f"{time.time_ns()}"
        except Exception:  # undecodable: refuse this instance
            return 0xC210  # Cannot understand
        key = series_key(uid)
        with self.lock:
            series = self.series.get(key)
            if series is None or series.submitted:
                series = _Series(key, self.incoming / key)
                series.folder.mkdir(parents=True, exist_ok=True)
                self.series[key] = series
            series.active.add(id(event.assoc))
            series.last_activity = time.monotonic()
        name = hashlib.sha256(sop.encode()).hexdigest()[:24] + ".dcm"
        try:
            (series.folder / name).write_bytes(event.encoded_dataset())
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

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            now = time.monotonic()
            ready = []
            with self.lock:
                for key, series in list(self.series.items()):
                    if not series.submitted and not series.active and now - series.last_activity >= self.idle_seconds:
                        series.submitted = True
                        ready.append(series)
                        del self.series[key]
            for series in ready:
                log.info("%s complete (%d instances); submitting", series.key, series.instances)
                self.futures.append(self._pool.submit(self._submit, series))

    def _submit(self, series: _Series) -> None:
        out = self.out_dir / series.key
        out.mkdir(parents=True, exist_ok=True)
        try:
            self.submit(series.folder, series.key, out)
        except Exception as exc:  # written next to the outputs; the listener keeps running
            (out / "error.txt").write_text(f"{exc.__class__.__name__}: {exc}\n")
            log.warning("%s failed: %s", series.key, exc.__class__.__name__)
        finally:
            if not self.keep_incoming:
                shutil.rmtree(series.folder, ignore_errors=True)
            self.done.set()


def sdk_submitter(client, deidentify: bool = False, **options) -> Callable[[Path, str, Path], None]:
    """A ``submit`` for :class:`DicomListener` that runs the scan through ``client`` and downloads the outputs."""

    def submit(folder: Path, key: str, out: Path) -> None:
        count = sum(1 for p in folder.iterdir() if p.is_file())
        result = client.segment(folder, idempotency_key=f"listener-{key}-{count}", client_ref=key,
                                deidentify=deidentify, **options)
        client.download_all(result, out)
        (out / "job.txt").write_text(f"{result.job_id}\n")
        log.info("%s done: job %s, VRall %.2f %%", key, result.job_id, result.ratios_pct["all"])

    return submit
