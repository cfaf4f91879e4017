"""Hole filling of a lung mask: enclosed in 3D is lung, cut tangentially in a slice is not."""

from __future__ import annotations

import numpy as np

from coviax.labels import RIGHT_LUNG
from coviax.lungs.classical import fill_lung_holes


def _lung_with_dome(shape=(30, 60, 60)) -> tuple[np.ndarray, np.ndarray]:
    """A block of lung whose lower part is pushed up by a dome (the liver under the diaphragm): in the
    slices the dome reaches, its cross-section is a disk of soft tissue enclosed by lung."""
    z, y, x = np.indices(shape)
    lung = (y > 5) & (y < 55) & (x > 5) & (x < 55) & (z >= 2)
    dome = ((z - 0) ** 2 / 12.0**2 + ((y - 30) ** 2 + (x - 30) ** 2) / 15.0**2) <= 1.0
    return np.where(lung & ~dome, RIGHT_LUNG, 0).astype(np.uint8), dome & lung


def test_the_diaphragm_dome_cut_by_a_slice_stays_outside_the_lung():
    labels, dome = _lung_with_dome()
    enclosed_in_a_slice = dome[5]  # slice 5 cuts through the dome: a disk surrounded by lung
    assert enclosed_in_a_slice.sum() > 100 and (labels[5][enclosed_in_a_slice] == 0).all()
    filled = fill_lung_holes(labels)
    assert not (filled[dome] > 0).any(), "the dome is open to the abdomen in 3D: it is not a hole of the lung"


def test_a_vessel_enclosed_in_3d_is_filled():
    labels, _ = _lung_with_dome()
    labels[15:20, 20:25, 40:45] = 0  # a dense nodule or vessel segment inside the lung
    filled = fill_lung_holes(labels)
    assert (filled[15:20, 20:25, 40:45] == RIGHT_LUNG).all()


def test_dense_lung_cut_open_by_the_scan_s_first_slice_is_filled_under_a_lid():
    labels = np.zeros((10, 40, 40), np.uint8)
    labels[:, 5:35, 5:35] = RIGHT_LUNG
    labels[0:3, 15:25, 15:25] = 0  # consolidation that the scan's first slice cuts through
    filled = fill_lung_holes(labels)
    assert (filled[0:3, 15:25, 15:25] == RIGHT_LUNG).all()
    # the same region open to the outside of the lung's own box (not the scan's edge) stays out
    labels2 = np.zeros((12, 40, 40), np.uint8)
    labels2[2:, 5:35, 5:35] = RIGHT_LUNG
    labels2[2:5, 15:25, 15:25] = 0
    assert (fill_lung_holes(labels2)[2:5, 15:25, 15:25] == 0).all()
