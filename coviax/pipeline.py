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

import numpy as np

from coviax.errors import OptionError
from coviax.export.report import build_report, write_report
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
        folder for report.json, labels.nii.gz, seg.dcm, montage.png (created);
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
    artifacts: dict[str, Path] = {}
    with timer.stage("exports"):
        report = build_report(volume, lungs, lesions, quantities, timer.timings, options.study_label)
        if out_dir is not None:
            artifacts = write_outputs(out_dir, volume, lesions, report, options.outputs)
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
            lesions = engine.labels_from_raw(raw, lungs, volume.spacing_zyx)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # a failed lung stage does not wait for the network
    return lungs, lesions


def _timed(function, *args):
    started = time.perf_counter()
    return function(*args), time.perf_counter() - started


def write_outputs(out_dir, volume: Volume, lesions: LesionLabels, report: dict, outputs) -> dict[str, Path]:
    """Write the image outputs; the report itself is written last by :func:`run`.

    Each output asked for is written by its entry of :data:`WRITERS`, in that order: the SEG before
    the SR, which references its segments. The 3D meshes are made once and rendered once for the mesh
    files, both report pages and the Secondary Capture; the PDF page is laid out once for the PDF and
    the Secondary Capture.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    job = _OutputJob(out, volume, lesions, report, tuple(outputs))
    for name, writer in WRITERS:
        if name in job.outputs:
            writer(job)
    return job.artifacts


@dataclass
class _OutputJob:
    """What the writers share: the inputs, the artifacts so far, and the render and page made once."""

    out: Path
    volume: Volume
    lesions: LesionLabels
    report: dict
    outputs: tuple[str, ...]
    artifacts: dict[str, Path] = field(default_factory=dict)
    _meshes: object = None
    _render: object = None
    _pdf: tuple | None = None

    @property
    def notes(self) -> list[str]:
        return self.report["input"]["warnings"]

    def render(self):
        """The 3D render (an RGB array), written to render_3d.png when the mesh output is asked for."""
        if self._render is None:
            from coviax.export import mesh

            self._meshes = mesh.meshes_for(self.lesions.labels, self.volume)
            path = self.out / "render_3d.png" if "mesh" in self.outputs else None
            self._render = mesh.render_png(self._meshes, path, title=mesh.RENDER_TITLE)
        return self._render

    def pdf(self) -> tuple[Path | None, np.ndarray]:
        """The PDF page (written to report.pdf when the pdf output is asked for) and its pixels."""
        if self._pdf is None:
            from coviax.export.report_page import write_pdf

            self._pdf = write_pdf(self.report, self.volume.hu, self.lesions.labels, self.render(),
                                  self.out / "report.pdf" if "pdf" in self.outputs else None)
        return self._pdf


def _write_nifti(job: _OutputJob) -> None:
    from coviax.export.nifti import write_labels_nifti

    job.artifacts["labels_nifti"] = write_labels_nifti(job.lesions.labels, job.volume, job.out / "labels.nii.gz")


def _write_seg(job: _OutputJob) -> None:
    if not job.volume.source_headers:
        job.notes.append("no DICOM SEG written: the input was not a DICOM series")
        return
    from coviax.export.dicom.seg import write_dicom_seg

    job.artifacts["dicom_seg"] = write_dicom_seg(job.lesions.labels, job.volume, job.out / "seg.dcm", job.lesions.engine)


def _write_montage(job: _OutputJob) -> None:
    from coviax.export.montage import write_montage

    ratios = job.report["ratios_pct"]
    title = f"VRall {ratios['all']:.1f} %  VRggo {ratios['ggo']:.1f} %  VRcs {ratios['consolidation']:.1f} %"
    job.artifacts["montage"] = write_montage(job.volume.hu, job.lesions.labels, job.out / "montage.png", title=title)


def _write_meshes(job: _OutputJob) -> None:
    from coviax.export import mesh

    job.render()
    job.artifacts.update(mesh.write_mesh_files(job._meshes, job.out))
    job.artifacts["render_3d"] = job.out / "render_3d.png"


def _write_html(job: _OutputJob) -> None:
    from coviax.export.report_page import write_html

    job.artifacts["report_html"] = write_html(job.report, job.volume.hu, job.lesions.labels, job.render(),
                                              job.out / "report.html")


def _write_pdf(job: _OutputJob) -> None:
    pdf_path, _page = job.pdf()
    if pdf_path is not None:
        job.artifacts["report_pdf"] = pdf_path


def _write_secondary_capture(job: _OutputJob) -> None:
    _pdf_path, page = job.pdf()  # laid out even without a DICOM source, as before: the page is the same
    if not job.volume.source_headers:
        job.notes.append("no DICOM Secondary Capture written: the input was not a DICOM series")
        return
    from coviax.export.dicom.sc import write_secondary_capture

    job.artifacts["dicom_sc"] = write_secondary_capture(page, job.volume, job.out / "report_sc.dcm")


def _write_sr(job: _OutputJob) -> None:
    if "dicom_seg" not in job.artifacts:
        job.notes.append("no DICOM SR written: it references the DICOM SEG, which needs DICOM input and the 'seg' output")
        return
    import pydicom

    from coviax.export.dicom.sr import write_dicom_sr

    seg_dataset = pydicom.dcmread(job.artifacts["dicom_seg"], stop_before_pixels=True)
    job.artifacts["dicom_sr"] = write_dicom_sr(job.report, seg_dataset, job.out / "measurements_sr.dcm",
                                               job.volume.series_uid)


#: output name -> its writer, in the order they run (the SR reads the SEG written before it).
WRITERS = (
    ("nifti", _write_nifti),
    ("seg", _write_seg),
    ("png", _write_montage),
    ("mesh", _write_meshes),
    ("html", _write_html),
    ("pdf", _write_pdf),
    ("sc", _write_secondary_capture),
    ("sr", _write_sr),
)
