"""``coviax cohort run``: every scan of a manifest through ``pipeline.run`` as Ray tasks.

Plain ``ray.remote`` tasks, not Ray Data: a scan is one unit of work of 5 s to minutes whose input is
a path on shared storage and whose output is a folder of files plus a small row, so there is no
data to stream between operators; what a cohort needs is per-scan control -- a retry policy, an
attempt counter and a completion marker per scan, results as each finishes (``ray.wait``) for the
progress line, and a failure of one scan that stays that scan's. Tasks give that directly; Ray
Data would hide the per-item failures inside a dataset and re-execute blocks by its own rules.

Locally (no ``--address``) Ray is started here with ``--workers`` CPUs, no dashboard and a 128 MB
object store (the rows are small; images never travel through it). With ``--address`` (``auto``,
``ray://host:10001`` on KubeRay, or ``host:6379``) the same tasks run on that cluster and
``--workers`` caps how many run at once; OUT must then be on storage every node sees (a shared
volume on KubeRay). The trainer's ``raytools.ensure_ray`` is not reused: it takes the trainer's
config and sets up Ray Data, which this runner does not use.

Surviving a worker's death: each task has ``max_retries`` (Ray reruns it when its worker process or
node dies), and on top of that the runner's own resume (see :mod:`coviax_cohort.state`): a task
that still fails counts as an attempt, and the next run retries it until ``--max-attempts``.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from coviax.errors import CoviaxError
from coviax_cohort.manifest import ScanRow
from coviax_cohort.state import ScanState
from coviax_cohort.task import analyse_scan

log = logging.getLogger("coviax.cohort")
OBJECT_STORE_BYTES = 128 * 1024 ** 2
RAY_TASK_RETRIES = 3


@dataclass
class RunSettings:
    out_dir: Path
    address: str | None = None
    workers: int = 1
    max_attempts: int = 3
    options: dict = field(default_factory=dict)
    ray_retries: int = RAY_TASK_RETRIES


@dataclass
class RunStats:
    total: int = 0
    skipped: int = 0  # done in an earlier run
    given_up: int = 0  # attempts used up in earlier runs
    ran: int = 0
    done: int = 0
    failed: int = 0
    seconds: float = 0.0

    @property
    def scans_per_s(self) -> float:
        return self.ran / self.seconds if self.seconds > 0 else 0.0


def plan(rows: list[ScanRow], settings: RunSettings) -> tuple[list[ScanRow], RunStats]:
    """The rows to run now: not done, attempts below the limit."""
    stats = RunStats(total=len(rows))
    todo = []
    for row in rows:
        state = ScanState(settings.out_dir, row.id)
        if state.is_done(row.scan):
            stats.skipped += 1
        elif int(state.load().get("attempts", 0)) >= settings.max_attempts:
            stats.given_up += 1
        else:
            todo.append(row)
    return todo, stats


def start_ray(address: str | None, workers: int) -> bool:
    """Join ``address`` or start a local Ray with ``workers`` CPUs; True when started here."""
    try:
        import ray
    except ImportError:
        raise CoviaxError("coviax cohort run needs Ray: pip install 'coviax[cohort]'") from None

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    quiet = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        return False
    # address="local": always a new Ray of our own. Without it ray.init() joins the cluster named in
    # /tmp/ray/ray_current_cluster (the last `ray start` or test cluster on the machine, anyone's) and
    # then refuses num_cpus -- seen when a loopback cluster ran beside the test suite.
    ray.init(address="local", num_cpus=workers, object_store_memory=OBJECT_STORE_BYTES, **quiet)
    return True


def run_scans(todo: list[ScanRow], settings: RunSettings, stats: RunStats, progress=None) -> RunStats:
    """Submit ``todo`` with at most ``settings.workers`` in flight; record each result as it arrives."""
    import ray

    remote = ray.remote(analyse_scan).options(num_cpus=1, max_retries=settings.ray_retries,
                                             retry_exceptions=False)
    pending = list(reversed(todo))
    in_flight: dict = {}
    started = time.perf_counter()
    while pending or in_flight:
        while pending and len(in_flight) < max(1, settings.workers):
            row = pending.pop()
            state = ScanState(settings.out_dir, row.id)
            state.start_attempt()
            spec = {"id": row.id, "scan": row.scan, "scan_dir": str(state.dir), "options": settings.options,
                    "threads": 1}
            in_flight[remote.remote(spec)] = row
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        for ref in ready:
            row = in_flight.pop(ref)
            result = _result_of(ref)
            _record(row, result, settings, stats)
        stats.seconds = time.perf_counter() - started
        if progress:
            progress(stats)
    return stats


def _result_of(ref) -> dict:
    """The task's row, or a failed row when Ray gave up on it (its retries spent on dead workers)."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return {"status": "failed", "error": f"{type(exc).__name__}: {first}"[:800]}


def _record(row: ScanRow, result: dict, settings: RunSettings, stats: RunStats) -> None:
    state = ScanState(settings.out_dir, row.id)
    stats.ran += 1
    if result.get("status") == "done":
        full = dict(result)
        full.update(_manifest_fields(row))
        state.record_success(full, row.scan)
        stats.done += 1
    else:
        state.record_failure(result.get("error") or "unknown error")
        stats.failed += 1
        log.warning("cohort: %s failed: %s", row.id, result.get("error"))


def _manifest_fields(row: ScanRow) -> dict:
    return {"subject": row.subject, "timepoint": row.timepoint, "site": row.site, "scan": row.scan}


class ProgressLine:
    """Progress of a run: a rich bar with scans/s and ETA on a terminal, a log line per scan otherwise."""

    def __init__(self, to_run: int, stream=None):
        self.stream = stream or sys.stderr
        self.to_run = to_run
        self._bar = None
        if self.stream.isatty() and to_run:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(TextColumn("cohort"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), console=Console(file=self.stream))
            self._task = self._bar.add_task("cohort", total=to_run, info="")

    def __enter__(self):
        if self._bar:
            self._bar.start()
        return self

    def __exit__(self, *exc):
        if self._bar:
            self._bar.stop()

    def text(self, stats: RunStats) -> str:
        rate = stats.scans_per_s
        left = self.to_run - stats.ran
        eta = f"ETA {_duration(left / rate)}" if rate > 0 and left else ("done" if not left else "ETA ?")
        return f"{stats.done} done, {stats.failed} failed, {rate:.3f} scans/s, {eta}"

    def __call__(self, stats: RunStats) -> None:
        if self._bar:
            self._bar.update(self._task, completed=stats.ran, info=self.text(stats))
        else:
            print(f"cohort: {stats.ran}/{self.to_run} " + self.text(stats), file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")
