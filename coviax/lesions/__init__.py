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
from typing import Protocol, runtime_checkable

import numpy as np

from coviax.errors import OptionError

#: The product's engines (``coviax segment``, ``coviax serve``), the default first.
SERVED_ENGINES = ("unet", "kmeans")
#: Every engine :func:`make_engine` builds: the product's and the baseline of ``make eval``.
ENGINES = SERVED_ENGINES + ("threshold",)


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


@dataclass(frozen=True)
class ModelInfo:
    """What a model-backed engine is: the id written in reports, its weights and its model card."""

    model: str  # as in report.json lesions.model, e.g. "unet_b@sha256:0123456789ab"
    weights_sha256: str = ""
    device: str = "cpu"
    card: str = ""  # a short model card: data, metrics, intended use
    notes: tuple[str, ...] = ()  # notes the engine adds to every report


@runtime_checkable
class SliceEngine(Engine, Protocol):
    """An engine that labels axial slices independently (2D), so slices can be segmented as they arrive.

    ``predict_slices`` gives the raw per-pixel classes (uint8, n y x) of int16 HU slices (n y x);
    only combining them with the lung cavity needs the whole volume.
    """

    def predict_slices(self, hu: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        ...

    def model_info(self) -> ModelInfo:  # pragma: no cover - interface
        ...


class UNetSliceEngine:
    """The U-Net engine (:class:`coviax.lesions.unet.UNetEngine`, or a wrapper of one) as a :class:`SliceEngine`.

    Kept apart from the network code so that the model module stays the trainer's and the engine's
    shared definition; everything that describes the served model is computed here, once.
    """

    name = "unet"

    def __init__(self, unet):
        self.unet = unet

    def predict_slices(self, hu: np.ndarray) -> np.ndarray:
        return self.unet.predict_slices(hu)

    def segment(self, volume, lungs) -> LesionLabels:
        return self.unet.segment(volume, lungs)

    def model_info(self) -> ModelInfo:
        import json

        from coviax.files import file_sha256

        unet = self.unet
        digest = unet.__dict__.get("weights_sha256") or ""  # set by UNetEngine.from_checkpoint
        if not digest and unet.weights_path is not None:
            digest = file_sha256(unet.weights_path)
        meta = unet.meta or {}
        card = meta.get("model_card")
        if not isinstance(card, str):
            summary = {k: meta[k] for k in sorted(meta) if k in ("name", "data", "metrics", "trained", "epochs")}
            card = (
                "2D U-Net, per-slice classes healthy / vessel / GGO / consolidation inside the lung cavity. "
                + (json.dumps(summary) if meta else "No model card in the checkpoint.")
                + " Research use only; not a medical device."
            )
        return ModelInfo(model=unet.model_id, weights_sha256=digest, device=str(unet.device), card=card,
                         notes=tuple(unet.notes))


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
