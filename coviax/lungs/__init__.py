"""Stage 2 of the pipeline: the lung cavity mask, split into right and left lung.

Three methods behind one function, :func:`segment_lungs`:

- ``lungmask``: the published U-Net (Hofmanninger et al. 2020) through the
  ``lungmask`` package, with weights from a local file or the torch hub cache.
  We never download them.
- ``unet``: our own small lung network, weights shipped in the package
  (``unet.py``); trained to keep consolidation at the pleura inside and the
  heart, hilum and liver dome outside without a morphological closing.
- ``classical``: thresholds and morphology, needs no weights (``classical.py``).
- ``hybrid``: our lung network united with the classical method (``hybrid.py``):
  each keeps dense lesions the other drops.

``auto`` takes lungmask when its weights are on this machine, else the hybrid
when our lung network's weights are there, else the classical method; the
returned :class:`LungMask` says which ran and why, and the report repeats it.
Not the lung network alone: it cuts consolidation at the pleura out of the
lung (issue 26), and a default that drops dense lesions must not ship --
tests/test_default_keeps_consolidation.py fails if it does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from coviax.errors import OptionError
from coviax.labels import LEFT_LUNG, RIGHT_LUNG

#: Every lung method, the default first. The client keeps a copy (it does not import the core);
#: tests/test_settings.py checks that they agree.
LUNG_METHODS = ("auto", "lungmask", "hybrid", "unet", "classical")
#: The lung methods that need no weights (``auto`` falls back to the classical method).
WEIGHTLESS_METHODS = ("auto", "classical")


@dataclass
class LungMask:
    """Lung cavity mask: uint8 (z, y, x), 0 outside, 1 right lung, 2 left lung.

    ``lobes`` is set when a lobe model ran (lungmask LTRCLobes codes: 1 left
    upper, 2 left lower, 3 right upper, 4 right middle, 5 right lower).
    """

    labels: np.ndarray
    method: str
    notes: list[str] = field(default_factory=list)
    lobes: np.ndarray | None = None

    @property
    def cavity(self) -> np.ndarray:
        return self.labels > 0

    def voxel_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels.ravel(), minlength=3)
        return {"right": int(counts[RIGHT_LUNG]), "left": int(counts[LEFT_LUNG])}


def available_methods() -> tuple[str, ...]:
    """The lung methods this machine can run: those that need no weights, then those whose weights are
    found here (in :data:`LUNG_METHODS` order)."""
    from coviax.lungs import lungmask_adapter, unet

    network = unet.find_weights() is not None
    found = {"lungmask": lungmask_adapter.find_weights("R231") is not None, "unet": network, "hybrid": network}
    return (tuple(m for m in LUNG_METHODS if m in WEIGHTLESS_METHODS)
            + tuple(m for m in LUNG_METHODS if found.get(m)))


def segment_lungs(volume, method: str = "auto", weights: str | None = None, device: str = "cpu") -> LungMask:
    """Find the lungs in ``volume`` (a :class:`coviax.io.Volume`).

    Raises
    ------
    OptionError
        for an unknown method.
    WeightsNotFoundError
        for ``method="lungmask"``, ``"hybrid"`` or ``"unet"`` when no weights are on this machine.
    """
    from coviax.lungs import classical, hybrid, lungmask_adapter, unet

    if method not in LUNG_METHODS:
        raise OptionError(f"unknown lung method {method!r}; choose one of {', '.join(LUNG_METHODS)}")
    if method == "auto":
        found = lungmask_adapter.find_weights("R231", weights)
        if found is not None:
            return lungmask_adapter.segment_lungs_lungmask(volume, weights=str(found), device=device)
        looked = ("lungmask weights not found (looked in "
                  + ", ".join(str(p) for p in lungmask_adapter.candidate_paths("R231", weights)) + ")")
        if unet.find_weights() is not None:
            mask = hybrid.segment_lungs_hybrid(volume, device=device)
            mask.notes.insert(0, looked + "; used our lung network joined with the classical method (hybrid)")
            return mask
        mask = classical.segment_lungs_classical(volume)
        mask.notes.insert(0, looked + " and no lung network checkpoint (looked in "
                          + ", ".join(str(p) for p in unet.candidate_paths()) + "); used the classical method")
        return mask
    if method == "lungmask":
        return lungmask_adapter.segment_lungs_lungmask(volume, weights=weights, device=device)
    if method == "hybrid":
        return hybrid.segment_lungs_hybrid(volume, weights=weights, device=device)
    if method == "unet":
        return unet.segment_lungs_unet(volume, weights=weights, device=device)
    return classical.segment_lungs_classical(volume)
