"""Progress while a stage runs: a rich bar on a terminal, plain lines otherwise.

Ray workers cannot draw on the driver's terminal, and with
``log_to_driver=False`` their prints stay in the Ray logs. Training workers
push events to a :class:`ProgressActor` (a zero-CPU Ray actor, so it works on a
remote cluster too); the driver polls it once a second and draws. Per-scan
work (stages 1 and 4) streams results back through Ray Data, one row per scan.
"""

from __future__ import annotations

import sys
import threading
import time


class Reporter:
    """Driver-side display of one stage at a time."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._progress = None
        self._task = None
        self._total = 0
        self._done = 0
        self._last_pct = -1
        self._label = ""

    def line(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, highlight=False)
        else:
            print(text, file=self.stream, flush=True)

    def start(self, label: str, total: int) -> None:
        self.stop()
        self._label, self._total, self._done, self._last_pct = label, max(int(total), 1), 0, -1
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                console=Console(file=self.stream), transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(label, total=self._total, info="")

    def update(self, done: int, info: str = "") -> None:
        self._done = min(int(done), self._total)
        if self._progress is not None:
            self._progress.update(self._task, completed=self._done, info=info)
            return
        pct = int(100 * self._done / self._total) // 10 * 10
        if pct > self._last_pct:
            self._last_pct = pct
            print(f"  {self._label}: {self._done}/{self._total} ({pct}%) {info}".rstrip(), file=self.stream, flush=True)

    def advance(self, n: int = 1, info: str = "") -> None:
        self.update(self._done + n, info)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        self._progress = None
        self._task = None


def make_progress_actor():
    import ray

    @ray.remote(num_cpus=0)
    class ProgressActor:
        def __init__(self):
            self.events = []

        def push(self, event: dict) -> None:
            self.events.append(event)

        def drain(self) -> list:
            out, self.events = self.events, []
            return out

    return ProgressActor.remote()


class ActorPoller:
    """Poll a ProgressActor in a thread and hand its events to ``handle``."""

    def __init__(self, actor, handle, interval: float = 1.0):
        self.actor, self.handle, self.interval = actor, handle, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        self._flush()

    def _flush(self):
        import ray

        try:
            for event in ray.get(self.actor.drain.remote(), timeout=10):
                self.handle(event)
        except Exception:  # the display must never break a training run
            pass

    def _run(self):
        while not self._stop.wait(self.interval):
            self._flush()


def fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def now() -> float:
    return time.perf_counter()
