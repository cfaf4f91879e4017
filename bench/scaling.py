"""How cost grows with the number of slices (`make bench`, `run_bench.py --scaling`).

The bundled chest CT (64 slices over 315 mm) is resampled by ``build_scan`` to thinner slices so that the
series holds about 64, 128, 256, 505 and 1000 slices of 512x512 (1 mm reconstructions are common). Each
size runs the whole pipeline (U-Net engine, classical lungs, outputs report + SEG + PNG) in its own
process (bench/child.py), which gives each stage's seconds and the process's peak resident memory, and
the peak as it stood at the end of each stage (so the stage where memory peaks is named).

Per stage, a least-squares line seconds = intercept + slope x slices, its R^2, and the exponent k of
seconds ~ slices^k (log-log fit): a stage is called linear when R^2 >= 0.95 and 0.8 <= k <= 1.2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

EXTENT_MM = 315.0  # the bundled CT: 64 slices of 5 mm, first to last centre
DEFAULT_SIZES = (64, 128, 256, 505, 1000)
STAGES = ("read", "lungs", "lesions", "quantities", "exports")
#: the U-Net's own wall time; it runs beside the lung stage, so "lesions" is only what is left after the lungs
NETWORK = "lesion_network"


def thickness_for(slices: int) -> float:
    """The slice spacing (mm) that gives ``slices`` slices over the bundled CT's extent (0.625 -> 505)."""
    return round(EXTENT_MM / (slices - 1), 4)


def run_scaling(sizes, cache: Path, weights: str, build_scan, dicom_dir, run_child) -> dict:
    """Time every stage for each size; ``build_scan``, ``dicom_dir`` and ``run_child`` are run_bench's."""
    rows = []
    for target in sizes:
        scan = build_scan(cache, thickness_for(target))
        print(f"scaling: {target} slices ...", flush=True)
        out, peak = run_child(["pipeline", str(dicom_dir(scan)), str(cache / f"out-scaling-{target}"), "unet", "classical",
                                weights])
        rows.append({"target": target, "slices": out["slices"], "timings": out["timings"], "peak_rss_gib": peak,
                     "rss_after_stage_gib": out.get("rss_after_stage_gib", {})})
    return {"rows": rows, "fits": fits(rows)}


def fits(rows: list[dict]) -> dict:
    n = np.array([r["slices"] for r in rows], float)
    result = {}
    for stage in _columns(rows):
        t = np.array([r["timings"][stage] for r in rows], float)
        slope, intercept = np.polyfit(n, t, 1)
        predicted = intercept + slope * n
        ss_res, ss_tot = float(((t - predicted) ** 2).sum()), float(((t - t.mean()) ** 2).sum())
        r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0
        exponent = float(np.polyfit(np.log(n), np.log(np.maximum(t, 1e-4)), 1)[0])
        result[stage] = {"slope_s_per_100": 100 * float(slope), "intercept_s": float(intercept), "r2": r2,
                         "exponent": exponent, "linear": bool(r2 >= 0.95 and 0.8 <= exponent <= 1.2)}
    return result


def _columns(rows: list[dict]) -> tuple[str, ...]:
    network = (NETWORK,) if all(NETWORK in r["timings"] for r in rows) else ()
    return (*STAGES, *network, "total")


def peak_stage(row: dict) -> str | None:
    """The stage at whose end the process's peak resident memory was first reached."""
    after = row.get("rss_after_stage_gib") or {}
    if not after:
        return None
    top = max(after.values())
    return next(stage for stage, value in after.items() if value >= top - 1e-6)


def plot(scaling: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = scaling["rows"]
    n = [r["slices"] for r in rows]
    fig, (ax, mem) = plt.subplots(1, 2, figsize=(11, 4.2))
    for stage in _columns(rows):
        ax.plot(n, [r["timings"][stage] for r in rows], marker="o", label=stage,
                linestyle="--" if stage == "total" else "-")
    ax.set_xlabel("slices (512 x 512)")
    ax.set_ylabel("seconds")
    ax.set_title("seconds per stage")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    mem.plot(n, [r["peak_rss_gib"] for r in rows], marker="o", color="black")
    mem.set_xlabel("slices (512 x 512)")
    mem.set_ylabel("peak resident memory (GiB)")
    mem.set_title("peak memory of the whole run")
    mem.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def render(scaling: dict, plot_name: str = "scaling.png") -> list[str]:
    """The "How cost grows" section of RESULTS.md."""
    rows, fit = scaling["rows"], scaling["fits"]
    lines = ["## How cost grows with the number of slices", "",
             f"The bundled CT resampled to thinner slices, whole pipeline per size in its own process "
             f"(U-Net engine, classical lungs, report + SEG + PNG). Plot: `bench/{plot_name}`.", "",
             f"`{NETWORK}` is the U-Net's own wall time: it runs beside the lung stage, so `lesions` is "
             "only what the lesion stage still took once the lungs were done.", "",
             "| slices | " + " | ".join(_columns(rows)) + " | peak memory | peak reached in |",
             "|---:|" + "---:|" * len(_columns(rows)) + "---:|---|"]
    for r in rows:
        cells = " | ".join(f"{r['timings'][s]:.2f}" for s in _columns(rows))
        lines.append(f"| {r['slices']} | {cells} | {r['peak_rss_gib']:.2f} GiB | {peak_stage(r) or '?'} |")
    lines += ["", "| stage | slope (s per 100 slices) | intercept (s) | R^2 | exponent k (s ~ slices^k) | linear? |",
              "|---|---:|---:|---:|---:|---|"]
    for stage, f in fit.items():
        lines.append(f"| {stage} | {f['slope_s_per_100']:.3f} | {f['intercept_s']:.2f} | {f['r2']:.3f} | "
                     f"{f['exponent']:.2f} | {'yes' if f['linear'] else 'no'} |")
    biggest = max(rows, key=lambda r: r["slices"])
    per_slice = [(r["peak_rss_gib"] - rows[0]["peak_rss_gib"]) / max(r["slices"] - rows[0]["slices"], 1) for r in rows[1:]]
    lines += ["", f"Memory peaks in the {peak_stage(biggest) or '?'} stage at {biggest['slices']} slices "
              f"({biggest['peak_rss_gib']:.2f} GiB)"
              + (f"; it grows by about {1024 * float(np.median(per_slice)):.1f} MiB per slice." if per_slice else "."),
              "A stage is called linear when R^2 >= 0.95 and 0.8 <= k <= 1.2; a fixed cost (model loading, imports) "
              "shows as the intercept and pulls k below 1 on the small sizes.", ""]
    return lines
