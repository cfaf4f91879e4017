"""What runs in the worker processes (``COVIAX_WORKERS``): the 3D part of a job.

The event loop and the inference device never wait for this: lungs (3D),
the K-means engine (3D, so it runs here after the last slice), the merge of
the U-Net's slice predictions with the lung cavity, quantities and exports
all run in a :class:`concurrent.futures.ProcessPoolExecutor` (spawn start
method: safe with grpc threads and CUDA in the parent).

The job goes through :func:`coviax.pipeline.run` itself, so a scan analysed
by the service gives the same report as ``coviax segment``. For the U-Net the
per-slice predictions made by the shared engine while the scan was arriving
are handed in (:class:`PrecomputedEngine`), keyed by SOPInstanceUID.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path

import numpy as np

from coviax.files import file_sha256, fsync_path
from coviax_service.errors import JobCancelled, disk_full

_progress_queue = None

#: Media types of the artifacts, by file name ending (the core decides which artifacts exist).
MEDIA_TYPES = (
    (".nii.gz", "application/gzip"), (".dcm", "application/dicom"), (".json", "application/json"),
    (".png", "image/png"), (".html", "text/html"), (".pdf", "application/pdf"), (".stl", "model/stl"),
    (".glb", "model/gltf-binary"), (".obj", "model/obj"), (".ply", "application/ply"),
)


def media_type(file_name: str) -> str:
    name = file_name.lower()
    return next((kind for suffix, kind in MEDIA_TYPES if name.endswith(suffix)), "application/octet-stream")


def init_worker(progress_queue) -> None:
    """Worker initializer (after :mod:`coviax_service.processes` capped its memory and started the
    watch on the server): keep the queue that carries stage events to the server."""
    global _progress_queue
    _progress_queue = progress_queue
    os.environ.setdefault("MPLBACKEND", "Agg")
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")


def warm_up(engine=None) -> int:
    """Import everything a job needs, and run a 3D engine once on a small dummy volume.

    The first real scan then pays neither the imports (~2 s) nor the first call.
    """
    import importlib
    import pkgutil

    import coviax.export
    import coviax.lungs.classical  # noqa: F401
    import coviax.pipeline  # noqa: F401

    for module in pkgutil.iter_modules(coviax.export.__path__):  # every exporter the core has
        try:
            importlib.import_module(f"coviax.export.{module.name}")
        except ImportError:  # an optional exporter whose library is absent fails only when asked for
            pass

    if engine is None:  # slice engine: the merge step imports the U-Net module (and torch)
        import coviax.lesions.unet  # noqa: F401
    else:
        from coviax.lungs import LungMask
        from coviax.io import Volume

        rng = np.random.default_rng(0)
        hu = rng.integers(-1000, 100, size=(6, 40, 40)).astype(np.int16)
        lungs = np.zeros(hu.shape, dtype=np.uint8)
        lungs[:, 5:35, 5:20], lungs[:, 5:35, 21:35] = 1, 2
        engine.segment(Volume(hu=hu, spacing_zyx=(2.0, 1.0, 1.0)), LungMask(lungs, "dummy"))
    return os.getpid()


class MissingPredictions(Exception):
    """Slices of the volume that the server has no U-Net prediction for (rare: see :func:`process_job`)."""

    def __init__(self, hu_by_z: dict[int, np.ndarray]):
        super().__init__(f"{len(hu_by_z)} slices without a prediction")
        self.hu_by_z = hu_by_z


class PrecomputedEngine:
    """An engine whose per-slice U-Net classes were computed by the server's shared engine."""

    name = "unet"

    def __init__(self, predictions: dict[str, np.ndarray], model_id: str, notes: list[str] | None = None):
        self.predictions = predictions
        self.model_id = model_id
        self.notes = list(notes or [])

    def segment(self, volume, lungs):
        from coviax.lesions import LesionLabels
        from coviax.lesions.unet import unet_labels

        keys = slice_keys(volume)
        missing = {z: volume.hu[z] for z, key in enumerate(keys) if key not in self.predictions
                   and f"z:{z}" not in self.predictions}
        if missing:
            raise MissingPredictions(missing)
        raw = np.stack([self.predictions.get(key, self.predictions.get(f"z:{z}")) for z, key in enumerate(keys)])
        return LesionLabels(unet_labels(raw, lungs.cavity, volume), self.name, self.model_id, notes=list(self.notes))


def slice_keys(volume) -> list[str]:
    """Key of each slice of a volume: its SOPInstanceUID, or ``z:INDEX`` for raw volumes."""
    if volume.source_headers:
        return [str(getattr(h, "SOPInstanceUID", "")) or f"z:{z}" for z, h in enumerate(volume.source_headers)]
    return [f"z:{z}" for z in range(volume.shape[0])]


def load_raw_volume(input_dir: Path):
    """The Volume of a RawSlices upload (raw.bin + geometry.json).

    Raises the core's ScanError when the values are not plausibly Hounsfield units
    (the same check a DICOM series or a NIfTI file gets).
    """
    from coviax.io import Volume, check_plausible_hu

    geometry = json.loads((input_dir / "geometry.json").read_text())
    n, rows, cols = geometry["slices"], geometry["rows"], geometry["columns"]
    hu = np.fromfile(input_dir / "raw.bin", dtype="<i2").reshape(n, rows, cols).astype(np.int16)
    check_plausible_hu(hu, where=f"the raw slices ({n} slices of {rows}x{cols})",
                       hint="RawSlices.hu must hold Hounsfield units (air near -1000), not raw detector values.")
    return Volume(
        hu=hu,
        spacing_zyx=tuple(geometry["spacing_zyx"]),
        origin_xyz=tuple(geometry["origin_xyz"]),
        direction=np.asarray(geometry["direction"], dtype=np.float64).reshape(3, 3),
        source_format="raw",
    )


def process_job(job_id: str, job_dir: str, out_name: str, options, engine, predictions=None) -> dict:
    """Analyse the upload in ``job_dir/input`` and write the outputs into ``job_dir/out_name``.

    ``options``: the job's :class:`~coviax_service.jobs.model.JobOptions`.
    ``engine``: the server's engine when it is 3D (K-means, pickled), else None
    and ``predictions`` holds the U-Net's classes per slice key.

    Returns ``{"report": dict, "artifacts": [{name, kind, file_name, size, sha256}]}``
    with every artifact fsync'ed, or ``{"need": {z: hu_slice}}`` when slices lack a
    prediction (the server predicts them and calls again). Raises the core's
    CoviaxError for bad input and JobCancelled once the job's CANCEL mark appears.
    """
    from coviax.pipeline import run

    job_dir = Path(job_dir)
    input_dir = job_dir / "input"
    out_dir = job_dir / out_name
    cancel_mark = job_dir / "CANCEL"

    def progress(stage: str, state: str) -> None:
        if cancel_mark.exists():
            raise JobCancelled("the job was cancelled")
        if _progress_queue is not None:
            _progress_queue.put((job_id, stage, state))

    opts = options.segment_options()
    if (input_dir / "raw.bin").exists():
        scan = load_raw_volume(input_dir)
    else:
        scan = input_dir
    if engine is None:
        engine = PrecomputedEngine(predictions or {}, options.model or "unet", list(options.model_notes))
    try:
        result = run(scan, out_dir, opts, progress=progress, engine=engine)
    except MissingPredictions as need:
        return {"need": need.hu_by_z}
    except OSError as exc:
        # The exception is pickled back to the server without its __cause__; a library that wrapped
        # ENOSPC in a plain OSError (pydicom's writer does) would come out as INTERNAL there.
        if disk_full(exc):
            raise OSError(errno.ENOSPC, "No space left on device while the results were written") from None
        raise
    artifacts = [_durable_artifact(name, Path(path), job_dir) for name, path in result.artifacts.items()]
    fsync_path(out_dir)
    return {"report": result.report, "artifacts": artifacts}


def _durable_artifact(name: str, path: Path, job_dir: Path) -> dict:
    """The artifact's row (name, media type, size, SHA-256, path under the data folder), its file fsync'ed."""
    digest = file_sha256(path, fsync=True)
    return {
        "name": name, "kind": media_type(path.name), "file_name": path.name,
        "size": path.stat().st_size, "sha256": digest,
        "path": str(path.relative_to(job_dir.parent.parent)),
    }
