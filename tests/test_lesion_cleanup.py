"""Lesions without a core (rims of partial volume at the lung's edge) go back to healthy lung."""

from __future__ import annotations

import numpy as np

from coviax.labels import Label
from coviax.lesions.cleanup import drop_coreless_lesions


def _lung(shape=(20, 60, 60)) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    labels[:, 5:55, 5:55] = Label.HEALTHY_LUNG
    return labels


def test_a_one_voxel_rim_at_the_lung_edge_is_dropped_and_a_lesion_with_a_core_is_kept_whole():
    labels = _lung()
    labels[:, 5, 5:55] = Label.GGO  # a rim one voxel thick along the pleura
    z, y, x = np.indices(labels.shape)
    ball = (z - 10) ** 2 + (y - 30) ** 2 + (x - 30) ** 2 <= 36
    labels[ball] = Label.GGO
    labels[ball & ((z - 10) ** 2 + (y - 30) ** 2 + (x - 30) ** 2 <= 4)] = Label.CONSOLIDATION
    changed = drop_coreless_lesions(labels, (1.5, 1.5, 1.5))
    assert changed == 20 * 50
    assert (labels[:, 5, 5:55] == Label.HEALTHY_LUNG).all()
    assert (labels[ball] >= Label.GGO).all(), "the ball, rim included, is kept"
    assert (labels[10, 30, 30] == Label.CONSOLIDATION)


def test_the_core_radius_is_in_mm_on_anisotropic_voxels():
    # a lesion 2 voxels thick in-plane: 1.6 mm at 0.8 mm pixels (no core), 4 mm at 2 mm pixels (a core)
    for spacing, kept in (((5.0, 0.8, 0.8), False), ((5.0, 2.0, 2.0), True)):
        labels = _lung()
        labels[5:15, 20:22, 10:50] = Label.GGO
        drop_coreless_lesions(labels, spacing)
        assert (labels[5:15, 20:22, 10:50] == Label.GGO).all() == kept


def test_a_lesion_cut_by_the_scan_s_edge_keeps_its_depth():
    labels = _lung((6, 60, 60))
    labels[0:2, 20:40, 20:40] = Label.GGO  # 2 slices at the scan's first slice: 3 mm, deep only if it goes on
    drop_coreless_lesions(labels, (1.5, 1.5, 1.5))
    assert (labels[0:2, 20:40, 20:40] == Label.GGO).all()


def test_nothing_to_do_without_lesions():
    labels = _lung()
    before = labels.copy()
    assert drop_coreless_lesions(labels, (1.0, 1.0, 1.0)) == 0
    assert np.array_equal(labels, before)
