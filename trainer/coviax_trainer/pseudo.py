"""Stage 1, pseudo-labels: the thesis's K-means labels, with one clustering for all scans.

1. per scan, in parallel (Ray Data): read or build the scan, lung mask
   (:func:`coviax.lungs.segment_lungs`), candidate voxels (lung, > -700 HU) and
   their 8 features (:func:`coviax.lesions.kmeans.voxel_features`); a cache
   file per scan keeps them and a random sample of features;
2. on the driver: one scaler (mean, std) and one mini-batch K-means (3
   clusters) fitted on the samples of all scans, clusters named once
   (:func:`coviax.lesions.kmeans.name_clusters`) on the pooled sample;
3. per scan, in parallel: assign clusters with
   ``KMeansEngine(model=..., scaler=...)``, morphological clean-up
   (:func:`coviax.lesions.kmeans.clean_up`, then an in-plane opening of the
   lesion mask, ``lesion_opening_mm``), write the slices with enough lung as
   shards (:mod:`coviax_trainer.data`).

Two choices of ours on top of the thesis's method, both about the weak labels
only: each scan's sample for the fit is drawn in equal parts from HU bands
(``kmeans_sampling: hu_bands``) -- with a uniform sample the dense voxels are so
rare that the three clusters become "GGO", "bright GGO" and "vessel +
consolidation"; and the opening turns the thin shells that K-means calls GGO
around every vessel (the bulk of its false positives in healthy lung) into vessel.

Resumable at each step: a scan whose cache (step 1) or fragment (step 3) exists
is not redone, nor is a fitted ``kmeans.pkl``.
"""

from __future__ import annotations

import pickle
import time
import zlib

import numpy as np

from coviax_trainer.config import Config, stage1_scans
from coviax_trainer.errors import TrainError
from coviax_trainer.data import scan_done, write_manifest, write_scan_shards
from coviax_trainer.progress import Reporter, fmt_seconds
from coviax_trainer.raytools import map_scans, row, spec_of
from coviax_trainer.rundir import RunDir, atomic_path

SET = "pseudo"


def _scan_rng(seed: int, scan_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(scan_id.encode())])


def sample_features(feats: np.ndarray, config: Config, rng: np.random.Generator) -> np.ndarray:
    """A scan's share of the K-means fit: uniform, or equal parts from each HU band (``kmeans_sampling``)."""
    k = min(len(feats), config.pseudo_labels.kmeans_samples_per_scan)
    if k == 0:
        return feats[:0]
    if config.pseudo_labels.kmeans_sampling == "uniform":
        return feats[rng.choice(len(feats), k, replace=False)]
    edges = [-np.inf] + list(config.pseudo_labels.kmeans_band_edges) + [np.inf]
    per_band = max(1, k // (len(edges) - 1))
    parts = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        idx = np.flatnonzero((feats[:, 0] >= lo) & (feats[:, 0] < hi))
        if len(idx):
            parts.append(feats[rng.choice(idx, min(per_band, len(idx)), replace=False)])
    return np.concatenate(parts) if parts else feats[:0]


def open_lesions(labels: np.ndarray, spacing_zyx, radius_mm: float) -> np.ndarray:
    """In-plane opening of the lesion mask (GGO + consolidation); what it removes becomes vessel."""
    from scipy import ndimage
    from skimage.morphology import disk

    from coviax.labels import Label

    r = int(round(radius_mm / float(min(spacing_zyx[1], spacing_zyx[2]))))
    if r < 1:
        return labels
    lesion = labels >= Label.GGO
    if not lesion.any():
        return labels
    opened = ndimage.binary_opening(lesion, structure=disk(r)[None].astype(bool))
    labels[lesion & ~opened] = Label.VESSEL
    return labels


def features_task(batch: dict, run_root: str, config: Config) -> dict:
    """Step 1 for one scan (runs in a Ray worker)."""
    from pathlib import Path

    from coviax.lesions.kmeans import CANDIDATE_HU, voxel_features
    from coviax.lungs import segment_lungs
    from coviax_trainer.sources import load_scan

    t0 = time.perf_counter()
    spec = spec_of(batch)
    cache = Path(run_root) / SET / "cache" / f"{spec.scan_id}.npz"
    volume = load_scan(spec, config.preprocess)
    lungs = segment_lungs(volume, config.pseudo_labels.lung_method)
    cavity = lungs.cavity
    candidates = cavity & (volume.hu > CANDIDATE_HU)
    n = int(candidates.sum())
    feats = voxel_features(volume, candidates) if n >= 30 else np.empty((0, 8), np.float32)
    flat = np.flatnonzero(candidates).astype(np.int64) if n >= 30 else np.empty(0, np.int64)
    sample = sample_features(feats, config, _scan_rng(config.seed, spec.scan_id))
    with atomic_path(cache) as tmp:
        with open(tmp, "wb") as f:
            np.savez(
                f, hu=volume.hu, lung=lungs.labels, candidates=flat, features=feats, sample=sample,
                spacing=np.asarray(volume.spacing_zyx, np.float64),
            )
    return row(scan=spec.scan_id, candidates=n, lung_voxels=int(cavity.sum()), seconds=round(time.perf_counter() - t0, 1),
               lung_method=lungs.method)


def assign_task(batch: dict, run_root: str, config: Config) -> dict:
    """Step 3 for one scan (runs in a Ray worker)."""
    from pathlib import Path

    from coviax.labels import Label
    from coviax.lesions.kmeans import KMeansEngine, clean_up

    t0 = time.perf_counter()
    spec = spec_of(batch)
    root = Path(run_root) / SET
    with open(root / "kmeans.pkl", "rb") as f:
        km = pickle.load(f)
    with np.load(root / "cache" / f"{spec.scan_id}.npz") as z:
        hu, lung, flat, feats, spacing = z["hu"], z["lung"], z["candidates"], z["features"], z["spacing"]
    cavity = lung > 0
    labels = np.where(cavity, np.uint8(Label.HEALTHY_LUNG), np.uint8(Label.BACKGROUND))
    disagree = False
    if len(feats):
        engine = KMeansEngine(seed=config.seed, model=km["model"], scaler=km["scaler"])
        clusters, per_scan_names = engine.cluster(feats)
        # the names fitted on the pooled sample, so a cluster means the same class in every scan
        names = km["names"]
        disagree = bool(np.any(per_scan_names != names))
        labels.reshape(-1)[flat] = names[clusters]
        labels = clean_up(labels, float(np.prod(spacing)) / 1000.0)
        labels = open_lesions(labels, spacing, config.pseudo_labels.lesion_opening_mm)
    per_slice = cavity.sum(axis=(1, 2))
    slices = [int(z) for z in np.flatnonzero(per_slice >= config.pseudo_labels.min_lung_pixels)]
    counts = np.bincount(labels.ravel(), minlength=5)
    fragment = {
        "spec": spec.to_json(), "shape": list(hu.shape), "spacing_zyx": [float(s) for s in spacing],
        "label_voxels": {str(i): int(c) for i, c in enumerate(counts)},
        "names_differ_from_per_scan_naming": disagree,
    }
    write_scan_shards(root, spec.scan_id, hu, labels, lung, slices, config.pseudo_labels.shard_slices, fragment)
    lesion = int(counts[3] + counts[4])
    return row(scan=spec.scan_id, slices=len(slices), lesion_pct=round(100.0 * lesion / max(1, int(cavity.sum())), 2),
               seconds=round(time.perf_counter() - t0, 1))


def fit_kmeans(run: RunDir, config: Config, scan_ids: list[str], reporter: Reporter) -> dict:
    """Step 2: scaler + MiniBatchKMeans on the pooled samples; cluster names from the pooled sample."""
    from sklearn.cluster import MiniBatchKMeans

    from coviax.lesions.kmeans import name_clusters

    path = run.path(SET, "kmeans.pkl")
    if path.is_file():
        with open(path, "rb") as f:
            return pickle.load(f)
    samples = []
    for sid in scan_ids:
        with np.load(run.path(SET, "cache", f"{sid}.npz")) as z:
            samples.append(z["sample"])
    pooled = np.concatenate(samples) if samples else np.empty((0, 8), np.float32)
    if len(pooled) < 30:
        raise TrainError("pseudo-labels: fewer than 30 dense lung voxels (> -700 HU) in all scans together; nothing to cluster")
    mean = pooled.mean(axis=0)
    std = pooled.std(axis=0) + 1e-6
    model = MiniBatchKMeans(n_clusters=3, random_state=config.seed, batch_size=config.pseudo_labels.kmeans_batch_size, n_init=3)
    model.fit((pooled - mean) / std)
    names = name_clusters(pooled, model.predict((pooled - mean) / std))
    km = {"model": model, "scaler": (mean, std), "names": names, "n_samples": int(len(pooled)), "scans": scan_ids}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            pickle.dump(km, f)
    from coviax.labels import Label

    reporter.line(
        f"  k-means fitted on {len(pooled)} voxels from {len(scan_ids)} scans; clusters: "
        + ", ".join(Label(int(n)).display_name for n in names)
    )
    return km


def run(run: RunDir, config: Config, reporter: Reporter) -> dict:
    specs = stage1_scans(config)
    ids = [s.scan_id for s in specs]
    set_dir = run.path(SET)
    (set_dir / "cache").mkdir(parents=True, exist_ok=True)
    root = str(run.root)
    t0 = time.perf_counter()

    todo = [s for s in specs if not scan_done(set_dir, s.scan_id) and not (set_dir / "cache" / f"{s.scan_id}.npz").is_file()]
    reporter.line(f"pseudo-labels: {len(specs)} scans ({len(specs) - len(todo)} already have features)")
    if todo:
        reporter.start("features + lungs", len(todo))
        for r in map_scans(features_task, todo, config, {"run_root": root, "config": config}):
            reporter.advance(1, f"{r['scan']} {r['seconds']}s")
            reporter.line(f"  features {r['scan']}: {r['lung_voxels']} lung voxels, {r['candidates']} candidates, {r['seconds']} s")
        reporter.stop()

    need_fit = not all(scan_done(set_dir, s) for s in ids)
    if need_fit:
        fit_kmeans(run, config, ids, reporter)
    todo = [s for s in specs if not scan_done(set_dir, s.scan_id)]
    if todo:
        reporter.start("assign + clean-up + shards", len(todo))
        for r in map_scans(assign_task, todo, config, {"run_root": root, "config": config}):
            reporter.advance(1, r["scan"])
            reporter.line(f"  labels {r['scan']}: {r['slices']} slices, lesion {r['lesion_pct']} % of lung, {r['seconds']} s")
        reporter.stop()

    rows = write_manifest(run, SET, ids)
    # the caches are only needed until every scan has its shards
    for p in (set_dir / "cache").glob("*.npz"):
        p.unlink()
    summary = {"scans": len(ids), "slices": len(rows), "seconds": round(time.perf_counter() - t0, 1)}
    reporter.line(f"pseudo-labels: {len(rows)} slices from {len(ids)} scans in {fmt_seconds(time.perf_counter() - t0)}")
    return summary
