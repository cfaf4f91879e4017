"""The image outputs of a scan: a table of output name -> writer (:data:`WRITERS`), run in three threads.

:func:`write_exports` is the pipeline's exports stage. Only the outputs asked for are written. Three
groups run side by side, each a thread, because on two cores most of their time is spent where the GIL is
released (numpy, cc3d, SimpleITK's gzip, scikit-image) or in Python that the other groups do not wait for:

- the DICOM SEG (then the SR, which references it), which needs neither the report nor the pages;
- labels.nii.gz, then the 3D meshes (marching cubes; drawn later by the main thread);
- in the calling thread: the report (its severity scores), then the montage, the render and mesh files,
  the HTML and PDF pages and the Secondary Capture -- everything that draws with matplotlib, which
  is not thread-safe, stays in this one thread.

One ordering rule: while highdicom makes the SEG's dataset, the patient's name is kept out of its
warning by a ``warnings.catch_warnings`` filter, which in Python 3.11 is process-wide state; another
thread entering and leaving its own ``catch_warnings`` (matplotlib does) could drop that filter. So only
the report (numpy and cc3d, no warning filters) and SimpleITK's NIfTI run beside that step; the meshes
and the matplotlib writers start once the dataset is made (the SEG's file is then written beside them).

Every output is what the writers wrote one after the other before: the artifacts come back in the order
of :data:`WRITERS`, and a writer that only adds a note (no DICOM input) runs in the calling thread, in
order, so the report's warnings read as before.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass
class _OutputJob:
    """What the writers share: the inputs, the report once made, and the meshes, render and page made once."""

    out: Path
    volume: object
    lesions: object
    outputs: tuple[str, ...]
    report: dict | None = None
    meshes: Future | None = None
    seg_built: threading.Event = field(default_factory=threading.Event)
    _render: object = None
    _pdf: tuple | None = None

    @property
    def notes(self) -> list[str]:
        return self.report["input"]["warnings"]

    def mesh_list(self):
        if self.meshes is None:
            self.meshes = _done(_make_meshes(self))
        return self.meshes.result()

    def render(self):
        """The 3D render (an RGB array), written to render_3d.png when the mesh output is asked for."""
        if self._render is None:
            from coviax.export import mesh

            path = self.out / "render_3d.png" if "mesh" in self.outputs else None
            self._render = mesh.render_png(self.mesh_list(), path, title=mesh.RENDER_TITLE)
        return self._render

    def pdf(self) -> tuple[Path | None, np.ndarray]:
        """The PDF page (written to report.pdf when the pdf output is asked for) and its pixels."""
        if self._pdf is None:
            from coviax.export.report_page import write_pdf

            self._pdf = write_pdf(self.report, self.volume.hu, self.lesions.labels, self.render(),
                                  self.out / "report.pdf" if "pdf" in self.outputs else None)
        return self._pdf


@dataclass
class _Group:
    """Writers run one after the other in one thread; the artifacts each of them wrote, by writer name."""

    job: _OutputJob
    names: list[str]
    written: dict[str, dict[str, Path]] = field(default_factory=dict)
    artifacts: dict[str, Path] = field(default_factory=dict)

    def __getattr__(self, name):  # the writers see the group as the job, with the group's own artifacts
        if name == "job":
            raise AttributeError(name)
        return getattr(self.job, name)

    def run(self, report_ready: Future | None = None) -> None:
        try:
            for name in self.names:
                if name == "sr" and report_ready is not None:
                    report_ready.result()  # the SR holds the report's measurements
                before = set(self.artifacts)
                dict(WRITERS)[name](self)
                self.written[name] = {k: v for k, v in self.artifacts.items() if k not in before}
        finally:
            if "seg" in self.names:
                self.job.seg_built.set()  # also when the SEG failed: the others must not wait for ever


def write_exports(out_dir, volume, lesions, make_report: Callable[[], dict], outputs) -> tuple[dict, dict[str, Path]]:
    """The report (``make_report()``, made while the SEG and the meshes are under way) and the outputs in
    ``outputs`` written into ``out_dir``; returns (report, artifacts). ``out_dir`` None writes nothing."""
    if out_dir is None:
        return make_report(), {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    job = _OutputJob(out, volume, lesions, tuple(outputs))
    asked = [name for name, _writer in WRITERS if name in job.outputs]
    dicom = bool(volume.source_headers) and "seg" in asked
    seg = _Group(job, [n for n in asked if dicom and n in ("seg", "sr")])
    side = _Group(job, [n for n in asked if n == "nifti"])
    main = _Group(job, [n for n in asked if n not in seg.names + side.names])
    report_ready: Future = Future()
    if not seg.names:
        job.seg_built.set()
    with ThreadPoolExecutor(2, thread_name_prefix="coviax-export") as pool:
        pending = [pool.submit(seg.run, report_ready), pool.submit(side.run)]
        try:
            job.report = make_report()
        finally:
            report_ready.set_result(None)
        job.seg_built.wait()
        if _needs_meshes(job.outputs):
            job.meshes = pool.submit(_make_meshes, job)
        main.run()
        for future in pending:
            future.result()
    written = {**seg.written, **side.written, **main.written}
    artifacts = {k: v for name in asked for k, v in written[name].items()}
    return job.report, artifacts


def write_outputs(out_dir, volume, lesions, report: dict, outputs) -> dict[str, Path]:
    """The outputs of an already made ``report`` (the report itself is written by the pipeline's ``run``)."""
    return write_exports(out_dir, volume, lesions, lambda: report, outputs)[1]


def _needs_meshes(outputs) -> bool:
    return bool({"mesh", "html", "pdf", "sc"} & set(outputs))


def _make_meshes(job: _OutputJob):
    from coviax.export import mesh

    return mesh.meshes_for(job.lesions.labels, job.volume)


def _done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def _write_nifti(job: _OutputJob) -> None:
    from coviax.export.nifti import write_labels_nifti

    job.artifacts["labels_nifti"] = write_labels_nifti(job.lesions.labels, job.volume, job.out / "labels.nii.gz")


def _write_seg(job: _OutputJob) -> None:
    if not job.volume.source_headers:
        job.notes.append("no DICOM SEG written: the input was not a DICOM series")
        return
    from coviax.export.dicom.seg import write_dicom_seg

    job.artifacts["dicom_seg"] = write_dicom_seg(job.lesions.labels, job.volume, job.out / "seg.dcm", job.lesions.engine,
                                                 built=job.seg_built.set)


def _write_montage(job: _OutputJob) -> None:
    from coviax.export.montage import write_montage

    ratios = job.report["ratios_pct"]
    title = f"VRall {ratios['all']:.1f} %  VRggo {ratios['ggo']:.1f} %  VRcs {ratios['consolidation']:.1f} %"
    job.artifacts["montage"] = write_montage(job.volume.hu, job.lesions.labels, job.out / "montage.png", title=title)


def _write_meshes(job: _OutputJob) -> None:
    from coviax.export import mesh

    job.render()
    job.artifacts.update(mesh.write_mesh_files(job.mesh_list(), job.out))
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


#: output name -> its writer, in the order of the artifacts (the SR reads the SEG written before it).
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
