"""Stage 2 of the pipeline: the lung cavity mask, split into right and left lung.

Two methods behind one function, :func:`segment_lungs`:

- ``lungmask``: the published U-Net (Hofmanninger et al. 2020) through the
  ``lungmask`` package, with weights from a local file or the torch hub cache.
  We never download them.
- ``classical``: thresholds and morphology, needs no weights (``classical.py``).

``auto`` takes lungmask when its weights are on this machine and the classical
method otherwise; the returned :class:`LungMask` says which ran and why, and the
report repeats it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from coviax.errors import OptionError
from coviax.labels import LEFT_LUNG, RIGHT_LUNG

LUNG_METHODS = ("auto", "lungmask", "classical")


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


def segment_lungs(volume, method: str = "auto", weights: str | None = None, device: str = "cpu") -> LungMask:
    """Find the lungs in ``volume`` (a :class:`coviax.scan.Volume`).

    Raises
    ------
    OptionError
        for an unknown method.
    WeightsNotFoundError
        for ``method="lungmask"`` when no weights are on this machine.
    """
    from coviax.lungs import classical, lungmask_adapter

    if method not in LUNG_METHODS:
        raise OptionError(f"unknown lung method {method!r}; choose one of {', '.join(LUNG_METHODS)}")
    if method == "auto":
        found = lungmask_adapter.find_weights("R231", weights)
        if found is None:
            mask = classical.segment_lungs_classical(volume)
            mask.notes.insert(
                0,
                "lungmask weights not found (looked in "
                + ", ".join(str(p) for p in lungmask_adapter.candidate_paths("R231", weights))
                + "); used the classical method",
            )
            return mask
        return lungmask_adapter.segment_lungs_lungmask(volume, weights=str(found), device=device)
    if method == "lungmask":
        return lungmask_adapter.segment_lungs_lungmask(volume, weights=weights, device=device)
    return classical.segment_lungs_classical(volume)
