"""Baselines that ``make bench`` measures the product against (not part of the product)."""

from __future__ import annotations

import numpy as np

from coviax.labels import Label


def naive_scipy_blobs(labels: np.ndarray) -> tuple[np.ndarray, list]:
    """The naive reference (label + center_of_mass over all labels) that ``make bench`` times
    :func:`coviax.quantify.quantify` against."""
    from scipy import ndimage

    lesion = labels >= Label.GGO
    components, count = ndimage.label(lesion, structure=np.ones((3, 3, 3)))
    sizes = ndimage.sum_labels(lesion, components, index=np.arange(1, count + 1))
    centroids = ndimage.center_of_mass(lesion, components, index=np.arange(1, count + 1))
    return np.asarray(sizes), centroids
