"""Stage 3 of the pipeline: label every lung voxel as healthy, vessel, GGO or consolidation.

All engines follow one interface (:class:`Engine`): given the CT volume and the
lung mask they return a uint8 label volume with the codes of
:mod:`coviax.labels`. Voxels outside the lung mask are always background, so
every ratio has the lung cavity as its denominator whatever the engine.

Engines:

- ``kmeans`` (:mod:`coviax.lesions.kmeans`): the thesis's unsupervised method,
  needs no weights.
- ``unet`` (:mod:`coviax.lesions.unet`): the 2D U-Net the trainer trains
  (U-Net B is what we serve), on CPU or CUDA.
- ``threshold`` (:mod:`coviax.lesions.threshold`): fixed HU bands, a baseline
  for ``make eval`` only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from coviax.errors import OptionError

ENGINES = ("kmeans", "unet", "threshold")


@dataclass
class LesionLabels:
    """Label volume (uint8, z y x, codes of :class:`coviax.labels.Label`) and where it came from."""

    labels: np.ndarray
    engine: str
    model: str
    notes: list[str] = field(default_factory=list)


class Engine(Protocol):
    name: str

    def segment(self, volume, lungs) -> LesionLabels:  # pragma: no cover - interface
        ...


def make_engine(
    name: str,
    weights: str | None = None,
    device: str = "cpu",
    precision: str = "auto",
    backend: str = "auto",
    seed: int = 0,
) -> Engine:
    """Build the engine called ``name``; weights, device, precision and backend apply to the U-Net.

    Raises
    ------
    OptionError
        for an unknown engine name or an unavailable device.
    WeightsNotFoundError
        for the U-Net when no checkpoint is given or shipped.
    """
    if name == "kmeans":
        from coviax.lesions.kmeans import KMeansEngine

        return KMeansEngine(seed=seed)
    if name == "unet":
        from coviax.lesions.unet import UNetEngine

        return UNetEngine.from_checkpoint(weights, device=device, precision=precision, backend=backend)
    if name == "threshold":
        from coviax.lesions.threshold import ThresholdEngine

        return ThresholdEngine()
    raise OptionError(f"unknown lesion engine {name!r}; choose one of {', '.join(ENGINES)}")
