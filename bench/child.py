"""One measured job of `make bench`, run in its own process so its peak memory is its own.

Usage: python bench/child.py pipeline SCAN_DIR OUT_DIR ENGINE LUNGS [WEIGHTS]
       python bench/child.py lungmask SCAN_DIR LUNGMASK_WEIGHTS
Prints one JSON line with the timings.
"""

from __future__ import annotations

import json
import resource
import sys
import time


def run_pipeline(scan: str, out: str, engine: str, lungs: str, weights: str | None) -> dict:
    from coviax.pipeline import SegmentOptions, run

    options = SegmentOptions(lungs=lungs, engine=engine, weights=weights,
                             outputs=("report", "seg", "png"))
    rss_after: dict[str, float] = {}

    def progress(stage: str, state: str) -> None:  # the process's peak so far, at the end of each stage
        if state == "end":
            rss_after[stage] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB

    started = time.perf_counter()
    result = run(scan, out, options, progress=progress)
    return {
        "rss_after_stage_gib": rss_after,
        "timings": result.timings,
        "wall": time.perf_counter() - started,
        "slices": result.volume.shape[0],
        "ratios": result.report["ratios_pct"],
        "lung_ml": result.report["lungs"]["volume_ml"]["total"],
        "lung_method": result.lungs.method,
        "notes": result.lesions.notes,
        "model": result.lesions.model,
    }


def run_lungmask(scan: str, weights: str) -> dict:
    from lungmask import LMInferer

    from coviax.io import read_scan

    volume = read_scan(scan)
    image = volume.to_sitk()
    inferer = LMInferer(modelpath=weights, force_cpu=True, batch_size=20, tqdm_disable=True)
    started = time.perf_counter()
    mask = inferer.apply(image)
    return {"lungs": time.perf_counter() - started, "slices": int(mask.shape[0])}


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "pipeline":
        out = run_pipeline(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6] if len(sys.argv) > 6 else None)
    elif mode == "lungmask":
        out = run_lungmask(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(out))
