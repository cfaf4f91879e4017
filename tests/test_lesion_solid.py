"""coviax/lesions/solid.py: a solid region enclosed by lung that the network calls background is opacity;
the same density continuous with tissue outside the cavity is not."""

from __future__ import annotations

import numpy as np

from coviax.labels import Label
from coviax.lesions.solid import label_enclosed_solid_lesions
from coviax.lesions.unet import combine_with_lungs


def _chest():
    """A 'lung' box of aerated tissue (-850 HU) inside soft tissue (40 HU); the network says lung inside."""
    hu = np.full((30, 60, 60), 40, np.int16)
    cavity = np.zeros(hu.shape, bool)
    cavity[3:27, 5:55, 5:55] = True
    hu[cavity] = -850
    raw = np.where(cavity, np.uint8(Label.HEALTHY_LUNG), np.uint8(Label.BACKGROUND))
    return hu, cavity, raw


def test_an_enclosed_solid_nodule_called_background_becomes_opacity():
    hu, cavity, raw = _chest()
    zz, yy, xx = np.ogrid[:30, :60, :60]
    nodule = (zz - 15) ** 2 + (yy - 30) ** 2 + (xx - 30) ** 2 <= 36
    rim = ((zz - 15) ** 2 + (yy - 30) ** 2 + (xx - 30) ** 2 <= 49) & ~nodule
    hu[nodule], hu[rim] = 20, -420  # a dense core with a ground-glass rim, as the LIDC nodule
    raw[nodule | rim] = Label.BACKGROUND  # what U-Net B does with a solid lesion it does not know
    labels = combine_with_lungs(raw, cavity)
    assert (labels[nodule] == Label.HEALTHY_LUNG).all()
    changed = label_enclosed_solid_lesions(labels, raw, cavity, hu, voxel_ml=0.001)
    assert changed == int((nodule | rim).sum())
    assert (labels[nodule] == Label.CONSOLIDATION).all() and (labels[rim] == Label.GGO).all()


def test_dense_tissue_continuous_with_the_chest_wall_stays_outside_the_lesions():
    hu, cavity, raw = _chest()
    wall = np.zeros(hu.shape, bool)
    wall[10:20, 5:12, 20:40] = True  # dense tissue the lung mask let in, open to the wall at y = 5
    hu[wall] = 30
    raw[wall] = Label.BACKGROUND
    labels = combine_with_lungs(raw, cavity)
    before = labels.copy()
    assert label_enclosed_solid_lesions(labels, raw, cavity, hu, voxel_ml=0.001) == 0
    assert np.array_equal(labels, before)


def test_vessels_and_tiny_specks_are_left_to_the_network():
    hu, cavity, raw = _chest()
    vessel = np.zeros(hu.shape, bool)
    vessel[5:25, 30, 30] = True
    hu[vessel] = 60
    raw[vessel] = Label.VESSEL  # the network knows a vessel
    speck = np.zeros(hu.shape, bool)
    speck[10, 15, 15] = True  # 1 voxel of 0.001 mL, under MIN_SOLID_ML
    hu[speck] = 30
    raw[speck] = Label.BACKGROUND
    labels = combine_with_lungs(raw, cavity)
    assert label_enclosed_solid_lesions(labels, raw, cavity, hu, voxel_ml=0.001) == 0
    assert (labels[vessel] == Label.VESSEL).all() and labels[speck][0] == Label.HEALTHY_LUNG


def test_an_enclosed_hilum_of_fat_vessels_and_air_is_not_a_solid_lesion():
    """A closing can enclose a hilum: dense, called background, surrounded by lung, but not soft tissue through
    and through (median -117 HU on the bundled CT)."""
    hu, cavity, raw = _chest()
    hilum = np.zeros(hu.shape, bool)
    hilum[10:20, 25:35, 25:35] = True
    rng = np.random.default_rng(0)
    hu[hilum] = rng.choice(np.array([-120, -100, -300, 40], np.int16), size=int(hilum.sum()), p=[0.4, 0.2, 0.2, 0.2])
    raw[hilum] = Label.BACKGROUND
    labels = combine_with_lungs(raw, cavity)
    assert np.median(hu[hilum]) < -50
    assert label_enclosed_solid_lesions(labels, raw, cavity, hu, voxel_ml=0.001) == 0
