"""The run folder: every stage's outputs plus ``state.json`` and ``stages.log``.

Layout (``RUN`` = ``--run-dir``, default ``$COVIAX_RUN_DIR``, else
``/mnt/coviax/runs/<name>`` when the shared training volume is mounted, else
``runs/<name>``)::

    RUN/config.yaml            the config the run was started with
    RUN/state.json             stage -> status (done | stale), times, summary
    RUN/stages.log             one line per stage start / done / skip
    RUN/pseudo/                stage 1: shards/*.npz, scans/<id>.json, manifest.jsonl, kmeans.pkl
    RUN/corrections/           stage 2: <scan>__z<slice>.png (imported label maps, codes 0-4)
    RUN/unet_a/, RUN/unet_b/   stages 3, 5: data/, model.pt, history.json (+ ray/ Ray Train storage)
    RUN/relabel/               stage 4: like pseudo/
    RUN/export/                stage 6: unet_b.pt, unet_b.card.json, unet_b.card.md

Every file a later step trusts is written to a temporary name in the same
folder and renamed (:func:`atomic_write`), so a run killed mid-write leaves no
half-written file under the real name; a stage counts as done only once
``state.json`` says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from coviax_trainer.config import Config
from coviax_trainer.errors import TrainConfigError

STATE_FILE = "state.json"
LOG_FILE = "stages.log"


def default_run_dir(config: Config) -> Path:
    if os.environ.get("COVIAX_RUN_DIR"):
        return Path(os.environ["COVIAX_RUN_DIR"])
    if config.run_dir:
        return Path(config.run_dir)
    shared = Path("/mnt/coviax")
    if shared.is_dir() and os.access(shared, os.W_OK):
        return shared / "runs" / config.name
    return Path("runs") / config.name


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; renamed onto it only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the outputs are ordinary files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: Path, data: bytes | str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data.encode() if isinstance(data, str) else data)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


class RunDir:
    """Stage state of one run folder."""

    def __init__(self, root: Path, config: Config):
        self.root = Path(root).resolve()
        self.config = config
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_file = None
        self._check_config()

    # ------------------------------------------------------------------ files
    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def _check_config(self) -> None:
        """A run folder belongs to one data definition; another one needs another folder."""
        state = self.state()
        digest = self.config.digest()
        if state.get("data_digest") and state["data_digest"] != digest:
            raise TrainConfigError(
                f"run folder {self.root} was made from another scan list / preprocessing "
                f"(config {state.get('config_path')}); use a new --run-dir for this config"
            )
        if not state.get("data_digest"):
            state.update(data_digest=digest, config_path=self.config.path, created=time.strftime("%Y-%m-%dT%H:%M:%S"))
            state.setdefault("stages", {})
            self._write_state(state)
        src = Path(self.config.path)
        if src.is_file():
            atomic_write(self.path("config.yaml"), src.read_text())

    def state(self) -> dict:
        p = self.path(STATE_FILE)
        return json.loads(p.read_text()) if p.is_file() else {"stages": {}}

    def _write_state(self, state: dict) -> None:
        write_json(self.path(STATE_FILE), state)

    # ------------------------------------------------------------------ locking
    def lock(self) -> None:
        """Refuse a second concurrent run in the same folder."""
        f = open(self.path(".lock"), "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise TrainConfigError(f"run folder {self.root} is in use by another `coviax train`; wait for it or use another --run-dir") from None
        f.write(str(os.getpid()))
        f.flush()
        self._lock_file = f

    def unlock(self) -> None:
        if self._lock_file:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    # ------------------------------------------------------------------ stages
    def is_done(self, stage: str) -> bool:
        return self.state()["stages"].get(stage, {}).get("status") == "done"

    def stage_info(self, stage: str) -> dict:
        return self.state()["stages"].get(stage, {})

    def log(self, stage: str, event: str, detail: str = "") -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {stage} {event}" + (f" {detail}" if detail else "") + "\n"
        with open(self.path(LOG_FILE), "a") as f:
            f.write(line)

    def mark_started(self, stage: str) -> None:
        state = self.state()
        info = state["stages"].setdefault(stage, {})
        if info.get("status") != "done":
            info.update(status="running", started=time.strftime("%Y-%m-%dT%H:%M:%S"))
        self._write_state(state)
        self.log(stage, "start")

    def mark_done(self, stage: str, seconds: float, summary: dict | None = None) -> None:
        state = self.state()
        state["stages"][stage] = {
            "status": "done",
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "seconds": round(seconds, 1),
            "summary": summary or {},
            "config_digest": self.config.stage_digest(stage),
        }
        self._write_state(state)
        self.log(stage, "done", f"{seconds:.1f}s")

    def mark_stale(self, stages: list[str], reason: str) -> None:
        state = self.state()
        for s in stages:
            info = state["stages"].get(s)
            if info and info.get("status") in ("done", "running"):
                info.update(status="stale", stale_reason=reason)
                self.log(s, "stale", reason)
        self._write_state(state)

    def reset_stage_dir(self, name: str) -> Path:
        """Empty a stage's folder (a stale stage starts afresh)."""
        d = self.path(name)
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d
