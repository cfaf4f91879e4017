"""The learned lung mask: a small 2D U-Net we train and ship (``--lungs unet``).

Why a network and not only morphology: the classical method must close the lung by 20 mm to
keep consolidation at the pleura inside, and that closing also pulls in hilar soft tissue and
the heart's border. The network learned what the closing was for without the closing: its
targets are the lungs *before* lesions were inserted (:func:`coviax_research.realdata.reference_lung_mask`)
and its inputs include phantoms whose consolidation reaches the pleura
(:mod:`coviax_trainer.supervised`, ``--task lungs``).

Same network class and inference path as the lesion U-Net (:class:`coviax.lesions.unet.UNetEngine`:
batched slices, bf16 on CPUs that have it); two classes, lung and not lung. After it, as lungmask
does: in each slice, parts with almost no aerated lung (< 5 % below -500 HU: islands in the liver or
stomach under the diaphragm dome) are dropped; then the largest 3D components (at most two, each at
least 50 mL, the second at least a tenth of the first), each lung's holes filled, right and left
split by the classical method's :func:`~coviax.lungs.classical.split_left_right`. Hand-written
because lungmask's post-processing (largest component per label) has no notion of aeration.

Weights: ``--lung-weights FILE``, ``$COVIAX_LUNG_UNET_WEIGHTS`` or the shipped
``coviax/models/lungs_unet.pt``; never downloaded.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import cc3d
import fastremap
import numpy as np

from coviax.errors import WeightsNotFoundError
from coviax.lungs.classical import component_sizes

SHIPPED_LUNG_WEIGHTS = Path(__file__).resolve().parent.parent / "models" / "lungs_unet.pt"
ENV_VAR = "COVIAX_LUNG_UNET_WEIGHTS"
MIN_LUNG_ML = 50.0
#: A part of the mask in one slice is lung only if some of it is aerated: at least this share of its
#: pixels below AERATED_HU. Dense lesions attached to aerated lung in the slice stay; islands of
#: soft tissue under the diaphragm dome (liver, stomach wall) that the network may call lung go.
AERATED_HU = -500
MIN_AERATED_SHARE = 0.05


def find_weights(weights: str | None = None) -> Path | None:
    """The lung network's checkpoint: explicit file, ``$COVIAX_LUNG_UNET_WEIGHTS``, or the shipped one."""
    for path in candidate_paths(weights):
        if path.is_file():
            return path
    return None


def candidate_paths(weights: str | None = None) -> list[Path]:
    if weights:
        return [Path(weights)]
    paths = [Path(os.environ[ENV_VAR])] if os.environ.get(ENV_VAR) else []
    return paths + [SHIPPED_LUNG_WEIGHTS]


def segment_lungs_unet(volume, weights: str | None = None, device: str = "cpu"):
    """Lung mask of ``volume`` by the lung network; see the module docstring.

    Raises
    ------
    WeightsNotFoundError
        when no checkpoint is found or the file is not a 2-class COViaX U-Net.
    """
    from coviax.lungs import LungMask
    from coviax.lungs.classical import fill_lung_holes, split_left_right

    path = find_weights(weights)
    if path is None:
        raise WeightsNotFoundError(
            "no lung network checkpoint found (looked in: " + ", ".join(str(p) for p in candidate_paths(weights))
            + "); pass --lung-weights FILE or use --lungs classical, which needs no weights")
    engine = _engine(str(path.resolve()), path.stat().st_mtime_ns, device)
    if engine.model.config.n_classes != 2:
        raise WeightsNotFoundError(f"{path}: a {engine.model.config.n_classes}-class network, not a lung network (2 classes)")
    raw = drop_unaerated_islands(engine.predict_volume(volume) > 0, volume.hu)
    lungs = keep_lung_components(raw, volume.voxel_volume_ml)
    notes = [f"lung network {engine.model_id}"]
    if not lungs.any():
        return LungMask(labels=np.zeros(volume.shape, np.uint8), method="unet", notes=notes + ["no lungs found"])
    labels, split_note = split_left_right(lungs, volume)
    if split_note:
        notes.append(split_note)
    return LungMask(labels=fill_lung_holes(labels), method="unet", notes=notes)


@functools.lru_cache(maxsize=4)
def _engine(path: str, mtime_ns: int, device: str):
    """One loaded network per (file, version of the file, device): the service segments many scans."""
    from coviax.lesions.unet import UNetEngine

    return UNetEngine.from_checkpoint(path, device=device)


def drop_unaerated_islands(mask: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """Remove, slice by slice, connected parts of ``mask`` with almost no aerated lung in them."""
    out = mask.copy()
    for z in np.flatnonzero(mask.any(axis=(1, 2))):
        parts = cc3d.connected_components(mask[z], connectivity=8)
        stats = cc3d.statistics(parts)
        counts = np.asarray(stats["voxel_counts"], dtype=np.int64)
        aerated = np.bincount(parts[hu[z] < AERATED_HU].ravel(), minlength=len(counts))
        bad = np.flatnonzero((aerated < MIN_AERATED_SHARE * counts) & (np.arange(len(counts)) > 0))
        if bad.size:
            out[z][np.isin(parts, bad)] = False
    return out


def keep_lung_components(mask: np.ndarray, voxel_ml: float) -> np.ndarray:
    """The one or two largest 26-connected parts that are big enough to be a lung."""
    if not mask.any():
        return mask
    components = cc3d.connected_components(mask, connectivity=26)
    counts = component_sizes(components)
    order = np.argsort(counts)[::-1][:2]
    keep = [int(i) for i in order if counts[i] * voxel_ml >= MIN_LUNG_ML and counts[i] >= 0.1 * counts[order[0]]]
    return fastremap.mask_except(components, keep) > 0 if keep else np.zeros_like(mask)
