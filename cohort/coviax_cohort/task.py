"""One scan of the cohort, as run inside a Ray worker: ``pipeline.run`` then the QC checks.

:func:`analyse_scan` is a plain function (the runner wraps it in ``ray.remote``), so a test can call
it without Ray. It writes the pipeline's outputs below ``work/`` of the scan's folder and moves them
to ``outputs/`` once complete; it returns the scan's row and never raises for a bad scan: an error
becomes ``status: failed`` with the error's message when it is the core's (``CoviaxError``: messages
name files, tags and geometry only, never a patient's name or ID), else with its type and place only.
"""

from __future__ import annotations

import os
import shutil
import time
import traceback
from pathlib import Path

from coviax.errors import CoviaxError

#: Lesion engines loaded once per worker process and reused across its tasks (Ray keeps workers).
_ENGINES: dict = {}


def analyse_scan(spec: dict) -> dict:
    """``spec``: id, scan, scan_dir, options (SegmentOptions fields), threads. Returns the row fields."""
    started = time.perf_counter()
    row = {"id": spec["id"], "node": _node_name()}
    try:
        row.update(_run(spec))
        row["status"] = "done"
        row["error"] = ""
    except CoviaxError as exc:
        row.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:800])
    except Exception as exc:  # a bug or an exhausted machine
        # Only the type and the place: a library's message may quote a header value (a patient's name),
        # and the core's own messages (CoviaxError, above) are the ones written never to.
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        at = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
        row.update(status="failed", error=f"{type(exc).__name__}{at} (message withheld: it may quote header values)")
    row["seconds"] = round(time.perf_counter() - started, 3)
    return row


def _run(spec: dict) -> dict:
    from coviax.pipeline import SegmentOptions, run
    from coviax.qc import flags_of, qc_checks

    threads = int(spec.get("threads", 1))
    _limit_threads(threads)
    options = SegmentOptions(**spec.get("options", {}))
    options.outputs = tuple(options.outputs)
    key = (options.engine, options.weights, options.device, options.precision, options.backend)
    if key not in _ENGINES:
        from coviax.lesions import make_engine

        _ENGINES[key] = make_engine(options.engine, weights=options.weights, device=options.device,
                                    precision=options.precision, backend=options.backend)
    scan_dir = Path(spec["scan_dir"])
    work, outputs = scan_dir / "work", scan_dir / "outputs"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "node.txt").write_text(_node_name() + "\n")  # which node works on it (and did: outputs/node.txt)
    result = run(spec["scan"], work, options, engine=_ENGINES[key])
    checks = qc_checks(result.volume, result.lungs)
    shutil.rmtree(outputs, ignore_errors=True)
    os.replace(work, outputs)
    return _row_of(result.report, checks, flags_of(checks))


def _row_of(report: dict, checks: list, flags: list[str]) -> dict:
    ratios, lesions, lung = report["ratios_pct"], report["lesions"]["volume_ml"], report["lungs"]["volume_ml"]
    by_name = {c.name: c for c in checks}
    return {
        "vr_all_pct": round(float(ratios["all"]), 4),
        "vr_ggo_pct": round(float(ratios["ggo"]), 4),
        "vr_cs_pct": round(float(ratios["consolidation"]), 4),
        "ggo_ml": round(float(lesions["ggo"]), 3),
        "consolidation_ml": round(float(lesions["consolidation"]), 3),
        "lesion_ml": round(float(lesions["ggo"]) + float(lesions["consolidation"]), 3),
        "lung_ml": round(float(lung["total"]), 1),
        "lung_method": report["lungs"]["method"],
        "engine": report["lesions"]["engine"],
        "slices": int(report["input"]["slices"]),
        "spacing_mm": "x".join(f"{s:g}" for s in report["input"]["spacing_mm"]),
        "qc_flags": ";".join(flags),
        "qc_slice_thickness_mm": by_name["thick_slices"].value,
        "qc_spacing_ratio": by_name["uneven_spacing"].value,
        "qc_contrast": by_name["contrast"].value,
        "qc_air_noise_hu": by_name["noise"].value,
        "qc_edge_lung_pct": by_name["truncated_lungs"].value,
        "qc": [c.to_dict() for c in checks],
        "pipeline_s": float(report["timings_s"].get("total", 0.0)),
    }


def _limit_threads(threads: int) -> None:
    """One task, ``threads`` CPUs: torch and the BLAS must not each start a thread per core."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    try:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    except ImportError:
        pass


def _node_name() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()[:8]
    except Exception:  # pragma: no cover - outside Ray
        pass
    return "local"
