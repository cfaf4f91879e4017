"""One folder per scan under ``OUT/scans/<id>/``, and what a rerun makes of it.

=================  ===========================================================================
``outputs/``       the pipeline's files (report.json, montage.png, ...), moved into place by the
                   task from ``work/`` once the pipeline has finished
``result.json``    the scan's table row (quantities, QC), written by the driver
``DONE``           the completion marker: written last, atomically (temporary file, fsync,
                   rename, folder fsync), after ``outputs/`` and ``result.json``; it names the
                   scan path it was made from
``state.json``     attempts so far, the last error, the history of attempts (driver only)
=================  ===========================================================================

A rerun skips a scan whose ``DONE`` exists and names the same scan path (a changed path in the
manifest makes it run again); any other scan runs again while its attempts are below the limit,
else it stays ``failed`` with its last error. An attempt is counted when it is submitted, so a run
killed mid-scan still counts it. Only the driver writes ``state.json``, ``result.json`` and ``DONE``
(no two processes write one file); tasks write only below ``work/`` and ``outputs/``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from coviax.files import fsync_path

DONE, RESULT, STATE = "DONE", "result.json", "state.json"


def write_atomic(path: Path, text: str) -> None:
    """``text`` into ``path``: a reader sees the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


class ScanState:
    """The folder of one scan of the cohort."""

    def __init__(self, out_dir: str | Path, scan_id: str):
        self.dir = Path(out_dir) / "scans" / scan_id
        self.id = scan_id

    def load(self) -> dict:
        try:
            return json.loads((self.dir / STATE).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {"attempts": 0, "last_error": None, "history": []}

    def _save(self, state: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.dir / STATE, json.dumps(state, indent=1) + "\n")

    def is_done(self, scan_path: str) -> bool:
        try:
            marker = json.loads((self.dir / DONE).read_text())
            json.loads((self.dir / RESULT).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        return marker.get("scan") == scan_path

    def result(self) -> dict:
        return json.loads((self.dir / RESULT).read_text())

    def start_attempt(self) -> int:
        """Count an attempt before it is submitted; returns its number (1, 2, ...)."""
        state = self.load()
        state["attempts"] = int(state.get("attempts", 0)) + 1
        state["history"] = (state.get("history") or [])[-19:] + [{"attempt": state["attempts"], "started": _now()}]
        self._save(state)
        return state["attempts"]

    def record_failure(self, error: str) -> None:
        state = self.load()
        state["last_error"] = error
        if state.get("history"):
            state["history"][-1].update(ended=_now(), error=error)
        self._save(state)

    def record_success(self, row: dict, scan_path: str) -> None:
        """result.json, then the DONE marker (both atomic): the marker is the commit point."""
        state = self.load()
        state["last_error"] = None
        if state.get("history"):
            state["history"][-1].update(ended=_now(), error=None)
        self._save(state)
        write_atomic(self.dir / RESULT, json.dumps(row, indent=1, default=_plain) + "\n")
        write_atomic(self.dir / DONE, json.dumps({"scan": scan_path, "finished": _now()}) + "\n")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _plain(value):
    """JSON for numpy scalars."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
