"""The U-Net engine: a 2D U-Net applied slice by slice, batched, on CPU or CUDA.

Because the network is 2D, :meth:`UNetEngine.predict_slices` can run on slices
as they arrive (the gRPC service streams them in); :func:`combine_with_lungs`
is the only step that needs the whole volume.

The U-Net's own lung/background decision is not used for the cavity: the lung
mask stage owns the cavity so that the ratios' denominator is the same for
every engine. The U-Net decides vessel / GGO / consolidation inside it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn import functional as F

from coviax.errors import OptionError, WeightsNotFoundError
from coviax.labels import Label
from coviax.lesions import LesionLabels
from coviax.lesions.unet_model import file_sha256, load_checkpoint, normalise_hu

#: Where the shipped U-Net B lives inside the package.
SHIPPED_WEIGHTS = Path(__file__).resolve().parent.parent / "models" / "unet_b.pt"


def resolve_weights(weights: str | None) -> Path:
    """The checkpoint to load: explicit file, ``$COVIAX_WEIGHTS``, or the shipped U-Net B.

    Raises
    ------
    WeightsNotFoundError
        when none of these exists.
    """
    candidates = [Path(weights)] if weights else []
    if not weights and os.environ.get("COVIAX_WEIGHTS"):
        candidates.append(Path(os.environ["COVIAX_WEIGHTS"]))
    if not weights:
        candidates.append(SHIPPED_WEIGHTS)
    for path in candidates:
        if path.is_file():
            return path
    raise WeightsNotFoundError(
        "no U-Net checkpoint found (looked in: " + ", ".join(str(p) for p in candidates) + "). "
        "Pass --weights FILE (a checkpoint from `coviax train`), or use --engine kmeans, which needs no weights."
    )


def check_device(device: str) -> torch.device:
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise OptionError(f"--device {device} asked for, but this machine has no usable CUDA GPU; use --device cpu")
        return torch.device(device)
    raise OptionError(f"unknown device {device!r}; use cpu or cuda")


class UNetEngine:
    name = "unet"

    def __init__(self, model: torch.nn.Module, device: str = "cpu", batch_size: int = 8, model_id: str = "unet"):
        self.device = check_device(device)
        self.model = model.to(self.device).eval()
        self.input_size = model.config.input_size
        self.batch_size = batch_size
        self.model_id = model_id
        self.progress: Callable[[int, int], None] | None = None

    @classmethod
    def from_checkpoint(cls, weights: str | None, device: str = "cpu", batch_size: int = 8) -> "UNetEngine":
        path = resolve_weights(weights)
        try:
            model, meta = load_checkpoint(path)
        except ValueError as exc:
            raise WeightsNotFoundError(str(exc)) from None
        name = meta.get("name", path.stem)
        engine = cls(model, device=device, batch_size=batch_size, model_id=f"{name}@sha256:{file_sha256(path)[:12]}")
        engine.meta = meta
        engine.weights_path = path
        return engine

    @torch.inference_mode()
    def predict_slices(self, hu: np.ndarray) -> np.ndarray:
        """Raw per-pixel classes (uint8, n y x) of axial HU slices (n y x)."""
        n, height, width = hu.shape
        out = np.empty((n, height, width), dtype=np.uint8)
        for start in range(0, n, self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(hu[start : start + self.batch_size])).to(self.device)
            x = normalise_hu(batch)[:, None]
            if (height, width) != (self.input_size, self.input_size):
                x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
            logits = self.model(x)
            if (height, width) != (self.input_size, self.input_size):
                logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            out[start : start + len(batch)] = logits.argmax(dim=1).to(torch.uint8).cpu().numpy()
            if self.progress:
                self.progress(min(start + self.batch_size, n), n)
        return out

    def segment(self, volume, lungs) -> LesionLabels:
        raw = self.predict_slices(volume.hu)
        return LesionLabels(combine_with_lungs(raw, lungs.cavity), self.name, self.model_id)


def combine_with_lungs(raw: np.ndarray, cavity: np.ndarray) -> np.ndarray:
    """Engine classes inside the lung cavity; healthy lung where it says lung or background."""
    labels = np.where(cavity, np.uint8(Label.HEALTHY_LUNG), np.uint8(Label.BACKGROUND))
    lesion_or_vessel = cavity & (raw >= Label.VESSEL)
    labels[lesion_or_vessel] = raw[lesion_or_vessel]
    return labels
