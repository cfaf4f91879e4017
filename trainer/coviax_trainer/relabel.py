"""Stage 4, relabel: U-Net A labels a larger scan set -> the second label set (``RUN/relabel/``).

Scans: the stage-1 training scans plus ``relabel_scans`` (the held-out
validation scans stay out). Per scan, in parallel (Ray Data): lung mask, U-Net A
softmax on every slice (resized as serving does), labels inside the lung mask
(:func:`coviax.lesions.unet.combine_with_lungs`), and a confidence per slice:
the mean max-softmax over the slice's lung pixels. All slices go to the shards;
the manifest (what U-Net B trains on) leaves out those below
``relabel.min_confidence`` and the least confident ``relabel.drop_fraction``
of the whole set -- except corrected slices: a correction replaces the
network's label and is always kept.
"""

from __future__ import annotations

import json
import time

import numpy as np

from coviax_trainer.config import Config, relabel_set
from coviax_trainer.data import scan_done, write_manifest, write_scan_shards
from coviax_trainer.progress import Reporter, fmt_seconds
from coviax_trainer.raytools import map_scans, row, spec_of
from coviax_trainer.rundir import RunDir

SET = "relabel"


def predict_with_confidence(model, hu: np.ndarray, input_size: int, batch: int = 8):
    """Classes (uint8) and max-softmax (float32) per pixel, slices resized exactly as UNetEngine does."""
    import torch
    from torch.nn import functional as F

    from coviax.lesions.unet_model import normalise_hu

    n, h, w = hu.shape
    classes = np.empty((n, h, w), np.uint8)
    conf = np.empty((n, h, w), np.float32)
    with torch.inference_mode():
        for s in range(0, n, batch):
            x = normalise_hu(torch.from_numpy(np.ascontiguousarray(hu[s : s + batch])))[:, None]
            if (h, w) != (input_size, input_size):
                x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
            logits = model(x)
            if (h, w) != (input_size, input_size):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            p = torch.softmax(logits, dim=1)
            m, c = p.max(dim=1)
            classes[s : s + batch] = c.to(torch.uint8).numpy()
            conf[s : s + batch] = m.numpy()
    return classes, conf


def relabel_task(batch: dict, run_root: str, config: Config) -> dict:
    from pathlib import Path

    import torch

    from coviax.lesions.unet import combine_with_lungs
    from coviax.lesions.unet_model import load_checkpoint
    from coviax.lungs import segment_lungs
    from coviax_trainer.labelmaps import read_label_image
    from coviax_trainer.sources import load_scan

    t0 = time.perf_counter()
    torch.set_num_threads(max(1, int(config.ray.cpus_per_scan_task)))
    spec = spec_of(batch)
    root = Path(run_root)
    model, _ = load_checkpoint(root / "unet_a" / "model.pt")
    volume = load_scan(spec, config.preprocess)
    lungs = segment_lungs(volume, config.pseudo_labels.lung_method)
    cavity = lungs.cavity
    per_slice = cavity.sum(axis=(1, 2))
    candidates = [int(z) for z in np.flatnonzero(per_slice >= config.pseudo_labels.min_lung_pixels)]
    labels = np.zeros(volume.shape, np.uint8)
    confidence = {}
    if candidates:
        classes, conf = predict_with_confidence(model, volume.hu[candidates], model.config.input_size, config.relabel.batch_size)
        labels[candidates] = combine_with_lungs(classes, cavity[candidates])
        for i, z in enumerate(candidates):
            confidence[z] = float(conf[i][cavity[z]].mean())
    corrections = {z: p for (_, z), p in correction_index_for(root, spec.scan_id).items() if 0 <= z < volume.shape[0]}
    for z, p in corrections.items():
        labels[z] = read_label_image(p)  # a correction replaces the network's label
    # every candidate slice goes to the shards; which are kept is decided over the whole set (run())
    written = sorted(set(candidates) | set(corrections))
    counts = np.bincount(labels[written].ravel(), minlength=5) if written else np.zeros(5, np.int64)
    fragment = {
        "spec": spec.to_json(), "shape": list(volume.shape), "spacing_zyx": list(volume.spacing_zyx),
        "confidence": {str(z): round(c, 5) for z, c in confidence.items()},
        "label_voxels": {str(i): int(c) for i, c in enumerate(counts)},
    }
    write_scan_shards(root / SET, spec.scan_id, volume.hu, labels, lungs.labels, written, config.pseudo_labels.shard_slices, fragment)
    mean_conf = float(np.mean(list(confidence.values()))) if confidence else float("nan")
    return row(scan=spec.scan_id, slices=len(written), mean_confidence=round(mean_conf, 4),
               seconds=round(time.perf_counter() - t0, 1))


def correction_index_for(root, scan_id: str) -> dict:
    """Corrections of one scan (a light stand-in for RunDir in a worker)."""
    from pathlib import Path

    d = Path(root) / "corrections"
    out = {}
    if d.is_dir():
        for p in d.glob(f"{scan_id}__z*.png"):
            z = p.stem.rpartition("__z")[2]
            if z.isdigit() and p.stem.rpartition("__z")[0] == scan_id:
                out[(scan_id, int(z))] = p
    return out


def run(run: RunDir, config: Config, reporter: Reporter) -> dict:
    t0 = time.perf_counter()
    specs = relabel_set(config)
    ids = [s.scan_id for s in specs]
    set_dir = run.path(SET)
    set_dir.mkdir(parents=True, exist_ok=True)
    todo = [s for s in specs if not scan_done(set_dir, s.scan_id)]
    reporter.line(f"relabel: U-Net A on {len(specs)} scans ({len(specs) - len(todo)} already done)")
    if todo:
        reporter.start("relabel with U-Net A", len(todo))
        for r in map_scans(relabel_task, todo, config, {"run_root": str(run.root), "config": config}):
            reporter.advance(1, r["scan"])
            reporter.line(f"  {r['scan']}: {r['slices']} slices, mean confidence {r['mean_confidence']}, {r['seconds']} s")
        reporter.stop()
    confidence = {}
    for sid in ids:
        frag = json.loads((set_dir / "scans" / f"{sid}.json").read_text())
        confidence.update({(sid, int(z)): c for z, c in frag["confidence"].items()})
    values = np.array(list(confidence.values()), dtype=np.float64)
    cut = float(config.relabel.min_confidence)
    if len(values) and config.relabel.drop_fraction > 0:
        cut = max(cut, float(np.quantile(values, config.relabel.drop_fraction)))

    def keep(row: dict, corrected: bool) -> bool:
        c = confidence.get((row["scan"], int(row["slice"])))
        row["confidence"] = c
        return corrected or (c is not None and c >= cut)

    rows = write_manifest(run, SET, ids, keep=keep)
    kept_keys = {(r["scan"], int(r["slice"])) for r in rows}
    dropped = sum(1 for key in confidence if key not in kept_keys)
    n_corr = sum(1 for r in rows if r["corrected"])
    reporter.line(
        f"relabel: kept {len(rows)} slices, dropped {dropped} with confidence below {cut:.4f} "
        f"(min_confidence {config.relabel.min_confidence}, drop_fraction {config.relabel.drop_fraction}), "
        f"{n_corr} corrected, in {fmt_seconds(time.perf_counter() - t0)}"
    )
    return {"scans": len(ids), "slices": len(rows), "dropped_low_confidence": dropped, "confidence_cut": round(cut, 5),
            "corrected": n_corr, "mean_confidence": round(float(values.mean()), 5) if len(values) else None}
