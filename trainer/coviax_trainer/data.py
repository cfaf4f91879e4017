"""Label sets on disk: sharded slice files, per-scan fragments, the manifest, and the loader.

A label set (``pseudo/`` from stage 1, ``relabel/`` from stage 4) is::

    SET/shards/<scan>__<k>.npz   compressed; hu int16 (n, y, x), label uint8 (n, y, x),
                                 lung uint8 (n, y, x; 0 out, 1 right, 2 left), slice int32 (n,)
    SET/scans/<scan>.json        written after that scan's shards: the scan is done
    SET/manifest.jsonl           one line per slice: shard, row, scan, slice, corrected
                                 (+ correction: the file that replaces the label)

:func:`load_slices` is the only reader the training stages use. It applies
every correction in ``RUN/corrections/`` whatever the manifest says, so an
imported correction wins over the generated label in every later stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from coviax_trainer.labelmaps import read_label_image
from coviax_trainer.rundir import RunDir, atomic_path, read_jsonl, write_json, write_jsonl

SETS = ("pseudo", "relabel")


def shard_name(scan_id: str, k: int) -> str:
    return f"shards/{scan_id}__{k:03d}.npz"


def write_scan_shards(set_dir: Path, scan_id: str, hu: np.ndarray, labels: np.ndarray, lung: np.ndarray,
                      slices: list[int], shard_slices: int, fragment: dict) -> dict:
    """Write one scan's slices as shards, then its fragment (the 'done' mark). Returns the fragment."""
    set_dir = Path(set_dir)
    (set_dir / "shards").mkdir(parents=True, exist_ok=True)
    rows = []
    for k, start in enumerate(range(0, len(slices), shard_slices)):
        chunk = np.asarray(slices[start : start + shard_slices], dtype=np.int32)
        name = shard_name(scan_id, k)
        with atomic_path(set_dir / name) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(
                    f, hu=hu[chunk].astype(np.int16), label=labels[chunk].astype(np.uint8),
                    lung=lung[chunk].astype(np.uint8), slice=chunk,
                )
        rows += [{"shard": name, "row": i, "scan": scan_id, "slice": int(z)} for i, z in enumerate(chunk)]
    fragment = dict(fragment, scan=scan_id, rows=rows)
    write_json(set_dir / "scans" / f"{scan_id}.json", fragment)
    return fragment


def scan_done(set_dir: Path, scan_id: str) -> bool:
    return (Path(set_dir) / "scans" / f"{scan_id}.json").is_file()


def read_fragment(set_dir: Path, scan_id: str) -> dict:
    return json.loads((Path(set_dir) / "scans" / f"{scan_id}.json").read_text())


def write_manifest(run: RunDir, set_name: str, scan_ids: list[str], keep=None) -> list[dict]:
    """Assemble SET/manifest.jsonl from the fragments (in scan order), with the correction flags.

    ``keep(row, corrected) -> bool`` filters the rows (stage 4 drops low-confidence slices).
    """
    set_dir = run.path(set_name)
    corrections = correction_index(run)
    rows = []
    for sid in scan_ids:
        for r in read_fragment(set_dir, sid)["rows"]:
            row = dict(r)
            key = (r["scan"], int(r["slice"]))
            if keep is not None and not keep(row, key in corrections):
                continue
            row["corrected"] = key in corrections
            if row["corrected"]:
                row["correction"] = str(corrections[key].relative_to(run.root))
            rows.append(row)
    write_jsonl(set_dir / "manifest.jsonl", rows)
    return rows


def refresh_manifests(run: RunDir) -> None:
    """Rewrite the correction flags of every existing manifest (after an import)."""
    corrections = correction_index(run)
    for set_name in SETS:
        path = run.path(set_name, "manifest.jsonl")
        rows = read_jsonl(path)
        if not rows:
            continue
        for row in rows:
            key = (row["scan"], int(row["slice"]))
            row["corrected"] = key in corrections
            row.pop("correction", None)
            if row["corrected"]:
                row["correction"] = str(corrections[key].relative_to(run.root))
        write_jsonl(path, rows)


def read_manifest(run: RunDir, set_name: str) -> list[dict]:
    return read_jsonl(run.path(set_name, "manifest.jsonl"))


# --------------------------------------------------------------------------- corrections

def correction_file(run: RunDir, scan_id: str, z: int) -> Path:
    return run.path("corrections", f"{scan_id}__z{int(z):04d}.png")


def correction_index(run: RunDir) -> dict[tuple[str, int], Path]:
    d = run.path("corrections")
    out = {}
    if d.is_dir():
        for p in sorted(d.glob("*__z*.png")):
            scan, _, z = p.stem.rpartition("__z")
            if z.isdigit():
                out[(scan, int(z))] = p
    return out


# --------------------------------------------------------------------------- loading

@dataclass
class SliceSet:
    """Slices of a label set (possibly of different sizes, hence lists)."""

    hu: list[np.ndarray]
    label: list[np.ndarray]
    lung: list[np.ndarray]
    scan: list[str]
    slice: list[int]
    corrected: list[bool]

    def __len__(self) -> int:
        return len(self.hu)


def load_slices(run: RunDir, set_name: str, scans: set[str] | None = None) -> SliceSet:
    """Every slice of a label set (optionally only some scans), corrections applied."""
    rows = read_manifest(run, set_name)
    corrections = correction_index(run)
    out = SliceSet([], [], [], [], [], [])
    by_shard: dict[str, list[dict]] = {}
    for r in rows:
        if scans is None or r["scan"] in scans:
            by_shard.setdefault(r["shard"], []).append(r)
    for shard, shard_rows in by_shard.items():
        with np.load(run.path(set_name, shard)) as z:
            hu, label, lung = z["hu"], z["label"], z["lung"]
            for r in shard_rows:
                i = r["row"]
                lab = label[i]
                key = (r["scan"], int(r["slice"]))
                corrected = key in corrections
                if corrected:
                    lab = read_label_image(corrections[key])
                    if lab.shape != label[i].shape:
                        raise ValueError(f"{corrections[key]}: shape {lab.shape} differs from the slice's {label[i].shape}")
                    lab = lab.astype(np.uint8)
                out.hu.append(hu[i])
                out.label.append(lab)
                out.lung.append(lung[i])
                out.scan.append(r["scan"])
                out.slice.append(int(r["slice"]))
                out.corrected.append(corrected)
    return out


def to_network_arrays(s: SliceSet, input_size: int, aspect: str = "stretch") -> dict[str, np.ndarray]:
    """Resize slices to the network's square input exactly as serving does.

    A slice that is not square is first padded with air (``aspect="pad"``, labels and lungs with 0;
    :func:`coviax.lesions.unet_model.square_padding`) or stretched whole (``"stretch"``).
    HU: :func:`normalise_hu` then bilinear (``align_corners=False``), as
    :meth:`coviax.lesions.unet.UNetEngine.predict_slices`; labels and lungs:
    nearest neighbour. Returns x float16 (n, S, S), y uint8, lung uint8.
    """
    import torch
    from torch.nn import functional as F

    from coviax.lesions.unet_model import normalise_hu, square_padding

    n = len(s)
    x = np.empty((n, input_size, input_size), np.float16)
    y = np.empty((n, input_size, input_size), np.uint8)
    lung = np.empty((n, input_size, input_size), np.uint8)
    for i in range(n):
        pad = square_padding(*s.hu[i].shape, aspect)
        padding = (pad[2], pad[3], pad[0], pad[1])
        t = F.pad(normalise_hu(torch.from_numpy(s.hu[i].astype(np.int16)))[None, None], padding, value=0.0)
        if t.shape[-2:] != (input_size, input_size):
            t = F.interpolate(t, size=(input_size, input_size), mode="bilinear", align_corners=False)
        x[i] = t[0, 0].numpy().astype(np.float16)
        for src, dst in ((s.label[i], y), (s.lung[i], lung)):
            m = F.pad(torch.from_numpy(src.astype(np.uint8))[None, None].float(), padding, value=0.0)
            if m.shape[-2:] != (input_size, input_size):
                m = F.interpolate(m, size=(input_size, input_size), mode="nearest")
            dst[i] = m[0, 0].numpy().astype(np.uint8)
    return {"x": x, "y": y, "lung": lung}
