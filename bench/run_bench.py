"""`make bench`: speed of every stage on a ~500-slice 512x512 chest CT, with baselines from the same run.

The scan is the bundled real chest CT (64 slices of 5 mm) resampled to thin
slices with hybrid lesions (coviax_research.phantom), written as a DICOM series. Each
measured job runs in its own process (bench/child.py) so its peak memory is
its own. Baselines measured in the same run, on the same scan:

- lungmask's ``LMInferer`` (R231 architecture, locally made random weights:
  the run time does not depend on the weights' values) for the lung stage;
- naive ``scipy.ndimage`` (label + center_of_mass) for the quantities;
- the fp32 U-Net for the fast CPU path.

Writes bench/RESULTS.md and bench/results.json. Absolute times are only
comparable on the same machine; the ratios are what the targets are about.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from scaling import DEFAULT_SIZES, run_scaling  # noqa: E402  (bench/scaling.py, beside this script)
from scaling import plot as plot_scaling  # noqa: E402
from scaling import render as render_scaling  # noqa: E402


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = "no GPU"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return f"{cpu}, {cores} cores, {mem_gb:.0f} GiB RAM, {gpu}"


def build_scan(cache: Path, thickness_mm: float, seed: int = 2024) -> Path:
    """The benchmark scan as a DICOM series (cached)."""
    from coviax.cli import sample_scan_path
    from coviax_research.phantom import make_phantom
    from coviax_research.phantom_write import write_phantom
    from coviax.io import read_scan

    folder = cache / f"scan-{thickness_mm:g}mm-seed{seed}"
    if (folder / "done").exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    source = read_scan(sample_scan_path())
    phantom = make_phantom(source, seed=seed, severity="moderate", slice_thickness_mm=thickness_mm)
    write_phantom(phantom, folder)
    np.save(folder / "truth_labels.npy", phantom.labels)
    (folder / "done").write_text("ok")
    return folder


def dicom_dir(scan_folder: Path) -> Path:
    for candidate in (scan_folder / "dicom", scan_folder):
        if any(candidate.glob("*.dcm")):
            return candidate
    return scan_folder


def run_child(args: list[str]) -> tuple[dict, float]:
    """Run bench/child.py; returns its JSON and its peak resident memory in GiB."""
    proc = subprocess.Popen([sys.executable, str(HERE / "child.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    out = proc.stdout.read()
    err = proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"bench child {args[0]} failed ({proc.returncode}):\n{err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1]), usage.ru_maxrss / 2**20  # KiB -> GiB


def unet_weights(cache: Path) -> tuple[str, str]:
    """The shipped U-Net B, or a random one of the default shape (timing does not depend on values)."""
    from coviax.lesions.unet import SHIPPED_WEIGHTS

    if SHIPPED_WEIGHTS.is_file():
        return str(SHIPPED_WEIGHTS), "shipped U-Net B"
    import torch

    from coviax.lesions.unet_model import UNet2D, UNetConfig, save_checkpoint

    path = cache / "random_unet.pt"
    if not path.exists():
        torch.manual_seed(0)
        save_checkpoint(UNet2D(UNetConfig()), path, meta={"name": "random-default-shape"})
    return str(path), "random weights of the default U-Net shape (no shipped U-Net B yet)"


def lungmask_weights(cache: Path) -> str:
    import torch
    from lungmask.resunet import UNet

    path = cache / "lungmask_r231_random.pth"
    if not path.exists():
        torch.manual_seed(0)
        net = UNet(n_classes=3, padding=True, depth=5, up_mode="upsample", batch_norm=True, residual=False)
        torch.save(net.state_dict(), path)
    return str(path)


def bench_quantities(labels: np.ndarray, spacing) -> dict:
    from baselines import naive_scipy_blobs  # bench/baselines.py (this script's folder is on sys.path)
    from coviax.quantify import quantify
    from coviax.io import Volume

    lungs = (labels > 0).astype(np.uint8)
    volume = Volume(hu=np.zeros((1, 1, 1), np.int16), spacing_zyx=spacing)
    volume.hu = np.broadcast_to(np.int16(0), labels.shape)
    started = time.perf_counter()
    q = quantify(labels, lungs, volume)
    fast = time.perf_counter() - started
    started = time.perf_counter()
    sizes, _ = naive_scipy_blobs(labels)
    naive = time.perf_counter() - started
    assert len(sizes) == q.blob_count, "fast and naive blob counts differ"
    return {"fast_s": fast, "naive_s": naive, "speedup": naive / fast, "blobs": q.blob_count}


def bench_unet_cpu(weights: str, hu: np.ndarray) -> dict:
    from coviax.lesions.unet_model import load_checkpoint
    from coviax.lesions.unet import UNetEngine

    model, _ = load_checkpoint(weights)
    results = {}
    reference = None
    for precision in ("fp32", "auto"):
        engine = UNetEngine(model, precision=precision)
        engine.predict_slices(hu[:2])  # warm-up
        started = time.perf_counter()
        labels = engine.predict_slices(hu)
        elapsed = time.perf_counter() - started
        name = "fp32" if precision == "fp32" else f"{str(engine.dtype).replace('torch.', '')} (auto)"
        results[name] = {"ms_per_slice": 1000 * elapsed / len(hu)}
        if reference is None:
            reference = labels
        results[name]["agreement_with_fp32"] = float((labels == reference).mean())
    return results


def bench_api(scan_dir: Path, weights: str, cache: Path, repeats: int = 3, clients: int = 4) -> dict | None:
    """End to end through the gRPC API on loopback (server in a subprocess), if the service is installed."""
    try:
        from coviax_client.sdk import CoviaxClient  # noqa: F401
    except ImportError:
        return None
    from bench.api_bench import run_api_bench

    return run_api_bench(scan_dir, weights, cache, repeats=repeats, clients=clients)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slice-thickness", type=float, default=0.625, help="mm; 0.625 gives 512 slices")
    parser.add_argument("--cache", default=str(HERE / "cache"))
    parser.add_argument("--out", default=str(HERE))
    parser.add_argument("--skip-lungmask", action="store_true")
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument("--scaling", action="store_true",
                        help="also time every stage for 64..1000 slices and plot it (bench/scaling.png)")
    parser.add_argument("--scaling-sizes", default=",".join(map(str, DEFAULT_SIZES)),
                        help="comma-separated slice counts of --scaling")
    parser.add_argument("--scaling-only", action="store_true", help="only the --scaling part")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    results: dict = {"machine": machine(), "date": time.strftime("%Y-%m-%d")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # before a long run, not at its end
    print(f"machine: {results['machine']}", flush=True)
    if args.scaling_only:
        return _scaling_only(args, cache, results)

    started = time.perf_counter()
    scan = build_scan(cache, args.slice_thickness)
    series = dicom_dir(scan)
    results["scan_build_s"] = time.perf_counter() - started
    weights, weights_note = unet_weights(cache)
    results["unet_weights"] = weights_note

    _time_pipelines(results, series, cache, weights, out, skip_lungmask=args.skip_lungmask)

    print("quantities: ours vs naive scipy ...", flush=True)
    truth = np.load(scan / "truth_labels.npy")
    from coviax.io import read_scan

    volume = read_scan(series)
    results["quantities"] = bench_quantities(truth, volume.spacing_zyx)

    print("U-Net on this CPU: fp32 vs the fast path ...", flush=True)
    mid = volume.shape[0] // 2
    results["unet_cpu"] = bench_unet_cpu(weights, volume.hu[mid - 16 : mid + 16])
    del volume, truth

    _save_partial(out, results)
    if not args.skip_api:
        print("end to end through the gRPC API ...", flush=True)
        results["api"] = bench_api(series, weights, cache)
        _save_partial(out, results)

    if args.scaling:
        results["scaling"] = _scaling(args, cache, weights)
    if "scaling" in results:
        plot_scaling(results["scaling"], out / "scaling.png")
    (out / "results.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (out / "results.partial.json").unlink(missing_ok=True)
    text = render(results)
    (out / "RESULTS.md").write_text(text)
    print(text)
    return 0


def _time_pipelines(results: dict, series: Path, cache: Path, weights: str, out: Path, skip_lungmask: bool) -> None:
    """The pipeline runs (default path first) and lungmask's, each in its own process, saved as they end."""
    print("our pipeline, the default path (unet engine, lungs auto) ...", flush=True)
    default, default_mem = run_child(["pipeline", str(series), str(cache / "out-default"), "unet", "auto", weights])
    results["pipeline_default"] = {**default, "peak_rss_gib": default_mem}
    results["slices"] = default["slices"]
    _save_partial(out, results)

    print("our pipeline (unet engine, classical lungs) ...", flush=True)
    ours, ours_mem = run_child(["pipeline", str(series), str(cache / "out-unet"), "unet", "classical", weights])
    results["pipeline_unet"] = {**ours, "peak_rss_gib": ours_mem}
    _save_partial(out, results)

    print("our pipeline (kmeans engine, classical lungs) ...", flush=True)
    km, km_mem = run_child(["pipeline", str(series), str(cache / "out-kmeans"), "kmeans", "classical"])
    results["pipeline_kmeans"] = {**km, "peak_rss_gib": km_mem}
    _save_partial(out, results)

    if not skip_lungmask:
        print("baseline: lungmask LMInferer on the same scan ...", flush=True)
        lm, lm_mem = run_child(["lungmask", str(series), lungmask_weights(cache)])
        results["lungmask"] = {**lm, "peak_rss_gib": lm_mem}
        _save_partial(out, results)


def _save_partial(out: Path, results: dict) -> None:
    """What is measured so far, in OUT/results.partial.json: a run that fails late keeps its first hours."""
    (out / "results.partial.tmp").write_text(json.dumps(results, indent=2, default=float) + "\n")
    (out / "results.partial.tmp").replace(out / "results.partial.json")


def _scaling(args, cache: Path, weights: str) -> dict:
    sizes = [int(n) for n in args.scaling_sizes.split(",") if n]
    print(f"how cost grows: {sizes} slices ...", flush=True)
    return run_scaling(sizes, cache, weights, build_scan, dicom_dir, run_child)


def _scaling_only(args, cache: Path, results: dict) -> int:
    """``--scaling-only``: the scaling section alone, in OUT/scaling.md, OUT/scaling.json and OUT/scaling.png."""
    weights, results["unet_weights"] = unet_weights(cache)
    results["scaling"] = _scaling(args, cache, weights)
    out = Path(args.out)
    plot_scaling(results["scaling"], out / "scaling.png")
    (out / "scaling.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    text = "\n".join([f"Measured on {results['date']}. Machine: {results['machine']}.", "",
                      *render_scaling(results["scaling"])])
    (out / "scaling.md").write_text(text)
    print(text)
    return 0


def _baseline_rows(r: dict, t: dict, core: float) -> list[str]:
    """The rows of "Against the baselines": lungmask, the naive scipy blobs, peak memory."""
    lines = []
    if "lungmask" in r:
        lm = r["lungmask"]["lungs"]
        lines.append(
            f"| lungs + lesions + quantities vs lungmask's lung mask alone | {core:.1f} s | {lm:.1f} s | "
            f"{core / lm:.2f}x | <= 0.5x {'(met)' if core <= 0.5 * lm else '(NOT met)'} |"
        )
        lines.append(f"| lungs only vs lungmask | {t['lungs']:.1f} s | {lm:.1f} s | {t['lungs'] / lm:.2f}x | |")
    q = r["quantities"]
    lines.append(
        f"| quantities vs naive scipy (label + center_of_mass), {q['blobs']} blobs | {q['fast_s']:.2f} s | "
        f"{q['naive_s']:.2f} s | {1 / q['speedup']:.3f}x | <= 0.125x {'(met)' if q['speedup'] >= 8 else '(NOT met)'} |"
    )
    lines.append(
        f"| peak memory, 500-slice scan | {r['pipeline_unet']['peak_rss_gib']:.2f} GiB | | | < 3 GB "
        f"{'(met)' if r['pipeline_unet']['peak_rss_gib'] * 1.0737 < 3 else '(NOT met)'} |"
    )
    return lines


def _pipeline_runs(r: dict) -> list[tuple[str, dict]]:
    """(column title, run) of the pipeline runs in this result, the default path first."""
    runs = []
    if "pipeline_default" in r:
        runs.append((f"default (lungs auto -> {r['pipeline_default'].get('lung_method', '?')}), s", r["pipeline_default"]))
    runs.append(("U-Net, classical lungs, s", r["pipeline_unet"]))
    return runs


def _stage_table(r: dict) -> list[str]:
    """The per-stage section: one column per pipeline run, the default path first."""
    runs = _pipeline_runs(r)
    lines = [
        "## Our pipeline per stage",
        "",
        "The default path (`coviax segment` with no options: lungs `auto`) first, then the U-Net engine inside the",
        "classical lungs (the rows the baselines and the scaling run compare). Outputs: report, SEG, montage.",
        "",
        "| stage | " + " | ".join(title for title, _ in runs) + " |",
        "|---|" + "---:|" * len(runs),
    ]
    for stage in ("read", "lungs", "lesions", "lesion_network", "quantities", "exports", "total"):
        cells = [f"{run['timings'][stage]:.2f}" if stage in run["timings"] else "--" for _, run in runs]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines.append("| peak RSS GiB | " + " | ".join(f"{run['peak_rss_gib']:.2f}" for _, run in runs) + " |")
    return lines


def render(r: dict) -> str:
    t = r["pipeline_unet"]["timings"]
    n = r["slices"]
    core = t["lungs"] + t["lesions"] + t["quantities"]
    lines = [
        "# Benchmark results",
        "",
        f"Measured by `make bench` on {r['date']}. Machine: {r['machine']}.",
        f"Scan: the bundled real chest CT resampled to {n} slices of 512x512 with hybrid lesions (moderate), "
        "as a DICOM series.",
        f"U-Net weights: {r['unet_weights']}.",
        "",
        *_stage_table(r),
    ]
    lines += [
        "",
        f"Peak resident memory of the classical-lungs run: {r['pipeline_unet']['peak_rss_gib']:.2f} GiB.",
        f"K-means engine instead of the U-Net: lesions {r['pipeline_kmeans']['timings']['lesions']:.1f} s, "
        f"total {r['pipeline_kmeans']['timings']['total']:.1f} s, peak {r['pipeline_kmeans']['peak_rss_gib']:.2f} GiB.",
        "",
        "## Against the baselines (same scan, same run)",
        "",
        "| comparison | ours | baseline | ratio | target |",
        "|---|---:|---:|---:|---|",
    ]
    lines += _baseline_rows(r, t, core)
    lines += ["", "## U-Net on this CPU (32 slices, batch 8)", "", "| variant | ms/slice | agreement with fp32 |", "|---|---:|---:|"]
    for name, v in r["unet_cpu"].items():
        lines.append(f"| {name} | {v['ms_per_slice']:.1f} | {v['agreement_with_fp32']:.4%} |")
    api = r.get("api")
    lines += ["", "## End to end through the gRPC API (loopback)", ""]
    if api:
        lines += [
            f"DICOM in, report and DICOM SEG out, client and server on this machine: median {api['median_s']:.1f} s "
            f"over {api['repeats']} runs (min {api['min_s']:.1f} s); {api['clients']} concurrent clients: "
            f"{api['scans_per_s']:.3f} scans/s.",
        ]
    else:
        lines.append("Not measured in this run (service not installed or --skip-api).")
    if "scaling" in r:
        lines += ["", *render_scaling(r["scaling"])]
    lines += [
        "",
        "## GPU",
        "",
        "Not measured: this session was not lent a GPU machine. `bench/gpu/run.sh` is the one script for a "
        "CUDA host (installs carried wheels, checks fp16/compiled/TensorRT against fp32, times the variants, "
        "prints a table). The TensorRT path is not yet measured anywhere.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
