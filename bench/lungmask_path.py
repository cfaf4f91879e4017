"""lungmask's LMInferer against our batched path over the same network (coviax/lungs/lungmask_fast.py).

    .venv/bin/python bench/lungmask_path.py --slices N [--device cpu|cuda] [--json OUT]

The scan is run_bench's: the bundled real chest CT resampled to N slices over its 315 mm
(``run_bench.build_scan`` with ``scaling.thickness_for``; 64 = the original 5 mm, 505 = 0.625 mm),
cached in bench/cache. Both paths run in this process, one after the other, with the same random
weights of R231's shape (seed 4, last bias zero: an arg-max that is not one class everywhere; run
time does not depend on the values). Prints each path's seconds and where they went (LMInferer's
pre-processing, post-processing and reshaping timed by wrapping its ``lungmask.utils`` functions;
its network is the rest), the ratio, and the voxel agreement of the final masks and of the network's
arg-max in lungmask's crop space (before post-processing).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from run_bench import build_scan, dicom_dir, machine  # noqa: E402  (bench/run_bench.py)
from scaling import thickness_for  # noqa: E402  (bench/scaling.py)

SEED = 4


def random_r231(cache: Path) -> Path:
    import torch
    from lungmask.resunet import UNet

    path = cache / f"lungmask_r231_random_seed{SEED}.pth"
    if not path.exists():
        torch.manual_seed(SEED)
        net = UNet(n_classes=3, padding=True, depth=5, up_mode="upsample", batch_norm=True, residual=False)
        torch.nn.init.zeros_(net.last.bias)
        torch.save(net.state_dict(), path)
    return path


def run_lminferer(image, weights: Path, device: str) -> tuple[np.ndarray, np.ndarray, dict]:
    from lungmask import LMInferer, utils

    spent = {"preprocess": 0.0, "postprocess": 0.0, "reshape": 0.0}
    seen = {}
    originals = {name: getattr(utils, name) for name in ("preprocess", "postprocessing", "reshape_mask")}

    def timed(name, key, keep=None):
        def wrapper(*args, **kwargs):
            if keep:
                seen[keep] = args[0].copy()
            started = time.perf_counter()
            try:
                return originals[name](*args, **kwargs)
            finally:
                spent[key] += time.perf_counter() - started
        return wrapper

    utils.preprocess = timed("preprocess", "preprocess")
    utils.postprocessing = timed("postprocessing", "postprocess", keep="raw")
    utils.reshape_mask = timed("reshape_mask", "reshape")
    try:
        inferer = LMInferer(modelpath=str(weights), force_cpu=(device == "cpu"), batch_size=20, tqdm_disable=True)
        started = time.perf_counter()
        mask = inferer.apply(image)
        total = time.perf_counter() - started
    finally:
        for name, fn in originals.items():
            setattr(utils, name, fn)
    spent["network"] = total - sum(spent.values())
    return mask, seen["raw"], {"total": total, **spent}


def run_ours(image, weights: Path, device: str) -> tuple[np.ndarray, np.ndarray, dict, str]:
    from coviax.lungs import lungmask_fast

    started = time.perf_counter()
    model = lungmask_fast.load_model(str(weights), device=device)
    result = lungmask_fast.segment(image, model, device=device)
    if device == "cuda":
        import torch

        torch.cuda.synchronize()
    total = time.perf_counter() - started
    return result.labels, result.raw, {"total": total, **result.timings}, result.precision


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--cache", type=Path, default=HERE / "cache")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from coviax.io import read_scan
    from coviax.lesions.unet import set_cpu_threads

    threads = set_cpu_threads()
    args.cache.mkdir(parents=True, exist_ok=True)
    scan = build_scan(args.cache, thickness_for(args.slices))
    volume = read_scan(dicom_dir(scan))
    image = volume.to_sitk()
    weights = random_r231(args.cache)
    print(f"{volume.shape[0]} slices of {volume.shape[1]}x{volume.shape[2]}, {args.device}, {threads} threads",
          flush=True)

    ref, ref_raw, lm_t = run_lminferer(image, weights, args.device)
    print("LMInferer.apply: " + ", ".join(f"{k} {v:.2f} s" for k, v in lm_t.items()), flush=True)
    ours, raw, our_t, precision = run_ours(image, weights, args.device)
    print(f"our path ({precision}): " + ", ".join(f"{k} {v:.2f} s" for k, v in our_t.items()), flush=True)

    agree = float((ours == ref).mean())
    agree_raw = float((raw == ref_raw).mean()) if raw.shape == ref_raw.shape else float("nan")
    in_ref = ref > 0
    lung_agree = float((ours[in_ref] == ref[in_ref]).mean()) if in_ref.any() else float("nan")
    fractions = (np.bincount(ref.ravel(), minlength=3)[:3] / ref.size).round(4).tolist()
    result = {
        "machine": machine(), "slices": int(volume.shape[0]), "device": args.device, "precision": precision,
        "lminferer_s": lm_t, "ours_s": our_t, "speedup": lm_t["total"] / our_t["total"],
        "agreement_final": agree, "agreement_within_lminferer_lungs": lung_agree,
        "agreement_raw_argmax": agree_raw, "lminferer_label_fractions": fractions,
        "weights": f"random R231 shape, seed {SEED}, last bias zero",
    }
    print(f"speed-up {result['speedup']:.2f}x; voxel agreement {100 * agree:.4f} % (final), "
          f"{100 * lung_agree:.4f} % inside LMInferer's lungs, {100 * agree_raw:.4f} % (raw arg-max, crop space); "
          f"LMInferer's labels 0/1/2: {fractions}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
