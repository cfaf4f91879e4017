"""Quantities on synthetic label volumes with exactly known answers, and against naive scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from coviax.labels import LEFT_LUNG, RIGHT_LUNG, Label
from coviax.quantify import quantify
from coviax.io import Volume


def _volume(shape, spacing=(2.0, 1.0, 0.5), origin=(-100.0, -50.0, 30.0), direction=None):
    return Volume(hu=np.zeros(shape, np.int16), spacing_zyx=spacing, origin_xyz=origin,
                  direction=np.eye(3) if direction is None else direction)


def test_known_volumes_ratios_and_blobs():
    shape = (20, 40, 60)
    vol = _volume(shape)  # voxel = 2 * 1 * 0.5 = 1 mm^3 = 0.001 mL
    lungs = np.zeros(shape, np.uint8)
    lungs[:, :, :30] = RIGHT_LUNG  # 24000 voxels = 24 mL
    lungs[:, :, 30:] = LEFT_LUNG
    labels = np.where(lungs > 0, Label.HEALTHY_LUNG, Label.BACKGROUND).astype(np.uint8)
    labels[2:6, 2:7, 2:12] = Label.GGO  # blob A: 4*5*10 = 200 voxels of GGO
    labels[2:6, 2:7, 12:14] = Label.CONSOLIDATION  # touching A: +40 consolidation -> one blob of 240
    labels[10:13, 20:23, 40:43] = Label.CONSOLIDATION  # blob B: 27 voxels
    labels[15, 30, 50] = Label.GGO  # blob C: 1 voxel
    labels[16, 31, 51] = Label.GGO  # diagonal neighbour of C: same blob with 26-connectivity
    labels[0:2, 0:2, 0:2] = Label.VESSEL  # 8 voxels
    q = quantify(labels, lungs, vol)
    assert q.lung_ml == {"left": 24.0, "right": 24.0, "total": 48.0}
    assert q.lesion_ml == {"ggo": pytest.approx(0.202), "consolidation": pytest.approx(0.067), "vessels": 0.008}
    assert q.ratios_pct["all"] == pytest.approx(100 * 0.269 / 48, abs=1e-4)
    assert q.ratios_pct["consolidation"] == pytest.approx(100 * 0.067 / 48, abs=1e-4)
    assert q.blob_count == 3
    a, b, c = q.blobs
    assert (a.rank, a.volume_ml, a.ggo_ml, a.consolidation_ml, a.dominant_class) == (1, 0.24, 0.2, 0.04, "ggo")
    assert a.centroid_voxel_zyx == pytest.approx((3.5, 4.0, 7.5))
    assert a.bbox_voxel_zyx == (2, 2, 2, 6, 7, 14)
    assert b.dominant_class == "consolidation" and b.volume_ml == pytest.approx(0.027)
    assert b.centroid_voxel_zyx == pytest.approx((11.0, 21.0, 41.0))
    # patient position = origin + (x*0.5, y*1, z*2) for an identity direction
    assert b.centroid_patient_mm == pytest.approx((-100 + 41 * 0.5, -50 + 21 * 1.0, 30 + 11 * 2.0))
    assert c.volume_ml == pytest.approx(0.002) and c.centroid_voxel_zyx == pytest.approx((15.5, 30.5, 50.5))


def test_patient_coordinates_follow_the_direction_matrix():
    shape = (4, 8, 8)
    flip_x = np.diag([-1.0, 1.0, 1.0])  # rows stored right-to-left (e.g. a RAS-stored NIfTI)
    vol = _volume(shape, spacing=(1.0, 1.0, 1.0), origin=(10.0, 0.0, 0.0), direction=flip_x)
    labels = np.zeros(shape, np.uint8)
    lungs = np.ones(shape, np.uint8)
    labels[1, 2, 3] = Label.GGO
    q = quantify(labels, lungs, vol)
    assert q.blobs[0].centroid_patient_mm == pytest.approx((10 - 3, 2, 1))


def test_no_lesion_and_no_lung():
    shape = (3, 4, 5)
    vol = _volume(shape)
    q = quantify(np.zeros(shape, np.uint8), np.zeros(shape, np.uint8), vol)
    assert q.blobs == [] and q.blob_count == 0
    assert q.ratios_pct == {"all": 0.0, "ggo": 0.0, "consolidation": 0.0}


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape mismatch"):
        quantify(np.zeros((2, 2, 2), np.uint8), np.zeros((2, 2, 3), np.uint8), _volume((2, 2, 2)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blobs_match_naive_scipy_on_random_volumes(seed):
    rng = np.random.default_rng(seed)
    shape = (30, 50, 40)
    labels = rng.choice([0, 1, 2, 3, 4], size=shape, p=[0.1, 0.6, 0.1, 0.15, 0.05]).astype(np.uint8)
    lungs = np.ones(shape, np.uint8)
    vol = _volume(shape, spacing=(1.0, 1.0, 1.0))
    q = quantify(labels, lungs, vol, max_blobs=1000)
    lesion = labels >= 3
    ref, n = ndimage.label(lesion, structure=np.ones((3, 3, 3)))
    assert q.blob_count == n
    sizes = ndimage.sum_labels(lesion, ref, np.arange(1, n + 1))
    centroids = ndimage.center_of_mass(lesion, ref, np.arange(1, n + 1))
    expected = sorted(((s, tuple(np.round(c, 3))) for s, c in zip(sizes, centroids)), key=lambda t: (-t[0], t[1]))
    got = sorted(((round(b.volume_ml / vol.voxel_volume_ml), tuple(np.round(b.centroid_voxel_zyx, 3))) for b in q.blobs), key=lambda t: (-t[0], t[1]))
    assert [s for s, _ in got] == [int(s) for s, _ in expected[: len(got)]]
    assert {c for _, c in got} == {tuple(float(x) for x in c) for _, c in expected}
