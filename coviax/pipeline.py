"""The whole path in one place: scan -> lungs -> lesions -> quantities -> exports.

:func:`run` is what ``coviax segment``, the gRPC service and the benchmarks
call. Each stage is timed; ``progress(stage, state)`` is told when a stage
starts and ends so a shell can draw a bar or write log lines.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from coviax.errors import OptionError
from coviax.export.report import build_report, write_report
from coviax.export.writers import write_exports, write_outputs  # noqa: F401  (write_outputs: the public name)
from coviax.lesions import ENGINES, Engine, LesionLabels, make_engine
from coviax.lungs import LUNG_METHODS, LungMask, segment_lungs
from coviax.quantify import Quantities, quantify
from coviax.io import Volume, read_scan

STAGES = ("read", "lungs", "lesions", "quantities", "exports")
OUTPUTS = ("report", "nifti", "seg", "png", "mesh", "html", "pdf", "sr", "sc")

Progress = Callable[[str, str], None]


@dataclass
class SegmentOptions:
    lungs: str = LUNG_METHODS[0]  # auto; one of LUNG_METHODS
    engine: str = ENGINES[0]  # unet (the shipped U-Net B); one of ENGINES
    weights: str | None = None  # U-Net checkpoint
    lung_weights: str | None = None  # lungmask weights
    device: str = "cpu"
    precision: str = "auto"  # U-Net: auto | fp32 | bf16 | fp16
    backend: str = "auto"  # U-Net: auto | torch | tensorrt
    series_uid: str | None = None
    outputs: tuple[str, ...] = OUTPUTS
    max_blobs: int = 10
    study_label: str | None = None

    def validate(self) -> None:
        if self.lungs not in LUNG_METHODS:
            raise OptionError(f"unknown lung method {self.lungs!r}; choose one of {', '.join(LUNG_METHODS)}")
        if self.engine not in ENGINES:
            raise OptionError(f"unknown lesion engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        unknown = set(self.outputs) - set(OUTPUTS)
        if unknown:
            raise OptionError(f"unknown outputs {sorted(unknown)}; choose from {', '.join(OUTPUTS)}")
        if not 0 <= self.max_blobs <= 1000:
            raise OptionError(f"max_blobs {self.max_blobs} outside 0..1000")


@dataclass
class Result:
    report: dict
    artifacts: dict[str, Path]
    volume: Volume
    lungs: LungMask
    lesions: LesionLabels
    quantities: Quantities
    timings: dict[str, float] = field(default_factory=dict)


class _Timer:
    def __init__(self, progress: Progress | None):
        self.progress = progress
        self.timings: dict[str, float] = {}

    def stage(self, name: str):
        timer = self

        class _Stage:
            def __enter__(self):
                self.start = time.perf_counter()
                if timer.progress:
                    timer.progress(name, "start")

            def __exit__(self, exc_type, exc, tb):
                timer.timings[name] = time.perf_counter() - self.start
                if timer.progress and exc_type is None:
                    timer.progress(name, "end")

        return _Stage()


def run(
    scan: str | Path | Volume,
    out_dir: str | Path | None,
    options: SegmentOptions | None = None,
    progress: Progress | None = None,
    engine: Engine | None = None,
) -> Result:
    """Analyse one scan and write the requested outputs into ``out_dir``.

    Parameters
    ----------
    scan:
        a path :func:`coviax.io.read_scan` accepts, or an already read Volume.
    out_dir:
        folder for report.json, labels.nii.gz, seg.dcm, montage.png (created; written by
        :func:`coviax.export.writers.write_exports`, the SEG and meshes beside the report and pages);
        None writes nothing.
    engine:
        a ready lesion engine (the service builds one and shares it); by default
        one is made from ``options``.

    Raises
    ------
    CoviaxError
        (subclasses) for bad input, missing weights or impossible options.
    """
    options = options or SegmentOptions()
    options.validate()
    timer = _Timer(progress)
    started = time.perf_counter()
    if engine is None:
        engine = make_engine(options.engine, weights=options.weights, device=options.device,
                             precision=options.precision, backend=options.backend)
    with timer.stage("read"):
        volume = scan if isinstance(scan, Volume) else read_scan(scan, series_uid=options.series_uid)
    lungs, lesions = _lungs_and_lesions(volume, options, engine, timer)
    with timer.stage("quantities"):
        quantities = quantify(lesions.labels, lungs.labels, volume, max_blobs=options.max_blobs)
    with timer.stage("exports"):
        report, artifacts = write_exports(
            out_dir, volume, lesions,
            lambda: build_report(volume, lungs, lesions, quantities, timer.timings, options.study_label),
            options.outputs)
    timer.timings["total"] = time.perf_counter() - started
    report["timings_s"] = {k: round(v, 3) for k, v in timer.timings.items()}
    report["artifacts"] = {k: p.name for k, p in artifacts.items()}
    if out_dir is not None and "report" in options.outputs:
        report["artifacts"]["report"] = "report.json"
        artifacts["report"] = write_report(report, Path(out_dir) / "report.json")
    return Result(report, artifacts, volume, lungs, lesions, quantities, timer.timings)


def _lungs_and_lesions(volume: Volume, options: SegmentOptions, engine: Engine, timer: _Timer):
    """The lung stage, and the lesion stage beside it where the engine allows.

    A U-Net engine's network needs no lung mask: only its last step, keeping its classes inside the
    cavity, does. So it runs in a thread while the lungs are found. The classical lung method is
    mostly one core's work and the network fills the other: on the 505-slice bench scan on 2 cores,
    17.1 s one after the other, 12.1 s side by side. ``lesions`` is then the time the lesion stage
    still took after the lungs were done; ``lesion_network`` the network's own wall time.
    """
    predict = getattr(engine, "predict_volume", None)
    if predict is None:
        with timer.stage("lungs"):
            lungs = segment_lungs(volume, options.lungs, weights=options.lung_weights, device=options.device)
        with timer.stage("lesions"):
            lesions = engine.segment(volume, lungs)
        return lungs, lesions
    pool = ThreadPoolExecutor(1, thread_name_prefix="coviax-network")
    try:
        pending = pool.submit(_timed, predict, volume)
        with timer.stage("lungs"):
            lungs = segment_lungs(volume, options.lungs, weights=options.lung_weights, device=options.device)
        with timer.stage("lesions"):
            raw, timer.timings["lesion_network"] = pending.result()
            lesions = engine.labels_from_raw(raw, lungs, volume)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a failed lung stage does not wait for the network
    return lungs, lesions


def _timed(function, *args):
    started = time.perf_counter()
    return function(*args), time.perf_counter() - started
