"""Severity scores (coviax.scores) on synthetic label volumes with exactly known fractions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from coviax.export.report import build_report, format_table, summary_rows
from coviax.labels import LEFT_LUNG, RIGHT_LUNG, Label
from coviax.lesions import LesionLabels
from coviax.lungs import LungMask
from coviax.quantify import quantify
from coviax.io import Volume
from coviax.scores import compute_scores, lobe_bin, lobe_scores, zone_bin, zone_of_slices

# Each lung: 12 slices of 10 x 10 voxels -> three zones of 4 slices = 400 voxels each.
Z, Y, X = 12, 10, 20


def _lungs() -> np.ndarray:
    lungs = np.zeros((Z, Y, X), np.uint8)
    lungs[:, :, :10] = RIGHT_LUNG  # low x = patient right (LPS)
    lungs[:, :, 10:] = LEFT_LUNG
    return lungs


def _fill(labels: np.ndarray, zs: slice, xs: slice, n: int, code: int = Label.GGO) -> None:
    """Set the first ``n`` voxels (C order) of the block labels[zs, :, xs] to ``code``."""
    block = labels[zs, :, xs]
    flat = block.reshape(-1).copy()
    flat[:n] = code
    labels[zs, :, xs] = flat.reshape(block.shape)


def _labels(right_counts, left_counts) -> np.ndarray:
    """Lesion counts per zone (upper, middle, lower) with z index 8..11 the upper zone (superior sign +1)."""
    labels = np.where(_lungs() > 0, Label.HEALTHY_LUNG, Label.BACKGROUND).astype(np.uint8)
    zone_slices = {0: slice(8, 12), 1: slice(4, 8), 2: slice(0, 4)}
    for counts, xs in ((right_counts, slice(0, 10)), (left_counts, slice(10, 20))):
        for zone, n in enumerate(counts):
            _fill(labels, zone_slices[zone], xs, n)
    return labels


@pytest.mark.parametrize(
    "affected, expected",
    [(0, 0), (1, 1), (99, 1), (100, 2), (199, 2), (200, 2), (201, 3), (300, 3), (301, 4), (400, 4)],
)
def test_zone_bins_at_the_edges(affected, expected):
    # of 400 voxels: 25 % = 100, 50 % = 200, 75 % = 300
    assert zone_bin(affected, 400) == expected


@pytest.mark.parametrize(
    "affected, expected",
    [(0, 0), (1, 1), (4, 1), (5, 2), (25, 2), (26, 3), (50, 3), (51, 4), (75, 4), (76, 5), (100, 5)],
)
def test_lobe_bins_at_the_edges(affected, expected):
    assert lobe_bin(affected, 100) == expected


def test_bins_at_edges_for_other_denominators():
    # the edges are compared in integers (100 * affected vs edge * total), whatever the lung size
    assert zone_bin(1, 4) == 2 and zone_bin(3, 12) == 2 and zone_bin(29, 116) == 2 and zone_bin(28, 116) == 1
    assert zone_bin(87, 116) == 3 and zone_bin(88, 116) == 4  # 75 % of 116 = 87
    assert lobe_bin(7, 140) == 2 and lobe_bin(6, 140) == 1 and lobe_bin(0, 0) == 0 and lobe_bin(3, 0) == 0


def test_zone_split_by_the_lungs_own_extent():
    # 10 slices: centres at (k + 0.5) / 10 of the extent -> 3 upper, 4 middle, 3 lower
    slices = np.arange(20, 30)
    zones = zone_of_slices(slices, superior_sign=1.0)
    assert list(zones[::-1]) == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]  # highest z is the most superior
    assert list(zone_of_slices(slices, superior_sign=-1.0)) == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]


def test_six_zone_score_with_known_fractions():
    labels = _labels(right_counts=(100, 0, 301), left_counts=(1, 200, 400))
    hu = np.full(labels.shape, -800, np.int16)
    scores = compute_scores(labels, _lungs(), hu, superior_sign=1.0)
    zones = scores["six_zone"]["zones"]
    assert zones["right_upper"] == {"score": 2, "affected_pct": 25.0, "slices": [8, 11]}
    assert zones["right_middle"]["score"] == 0 and zones["right_middle"]["affected_pct"] == 0.0
    assert zones["right_lower"]["score"] == 4 and zones["right_lower"]["slices"] == [0, 3]
    assert zones["left_upper"]["score"] == 1 and zones["left_upper"]["affected_pct"] == 0.25
    assert zones["left_middle"]["score"] == 2 and zones["left_middle"]["affected_pct"] == 50.0
    assert zones["left_lower"]["score"] == 4
    assert scores["six_zone"]["total"] == 2 + 0 + 4 + 1 + 2 + 4 and scores["six_zone"]["max"] == 24
    # opacity: per lung of 1200 voxels, overall of 2400
    assert scores["opacity_pct"]["right"] == pytest.approx(100 * 401 / 1200, abs=1e-4)
    assert scores["opacity_pct"]["left"] == pytest.approx(100 * 601 / 1200, abs=1e-4)
    assert scores["opacity_pct"]["overall"] == pytest.approx(100 * 1002 / 2400, abs=1e-4)


def test_upper_zone_follows_the_patient_axis():
    # the same lesions, but the scan runs feet-first (index 0 most superior): upper and lower swap
    labels = _labels(right_counts=(400, 0, 0), left_counts=(0, 0, 0))
    hu = np.full(labels.shape, -800, np.int16)
    head_up = compute_scores(labels, _lungs(), hu, superior_sign=1.0)["six_zone"]["zones"]
    feet_up = compute_scores(labels, _lungs(), hu, superior_sign=-1.0)["six_zone"]["zones"]
    assert head_up["right_upper"]["score"] == 4 and head_up["right_lower"]["score"] == 0
    assert feet_up["right_lower"]["score"] == 4 and feet_up["right_upper"]["score"] == 0


def test_high_opacity_counts_dense_lesion_voxels_and_all_consolidation():
    labels = _labels(right_counts=(0, 0, 0), left_counts=(0, 0, 0))
    hu = np.full(labels.shape, -800, np.int16)
    # right lung: 10 GGO voxels, 4 of them above -200 HU, one exactly at -200 (not above)
    idx = np.argwhere(_lungs() == RIGHT_LUNG)[:10]
    for k, (z, y, x) in enumerate(idx):
        labels[z, y, x] = Label.GGO
        hu[z, y, x] = -100 if k < 4 else (-200 if k == 4 else -600)
    # left lung: 6 consolidation voxels at -300 HU (high whatever their HU) and a dense healthy voxel (not a lesion)
    idx = np.argwhere(_lungs() == LEFT_LUNG)[:7]
    for z, y, x in idx[:6]:
        labels[z, y, x] = Label.CONSOLIDATION
        hu[z, y, x] = -300
    hu[tuple(idx[6])] = 50
    scores = compute_scores(labels, _lungs(), hu)
    assert scores["high_opacity_pct"]["right"] == pytest.approx(100 * 4 / 1200, abs=1e-4)
    assert scores["high_opacity_pct"]["left"] == pytest.approx(100 * 6 / 1200, abs=1e-4)
    assert scores["high_opacity_pct"]["overall"] == pytest.approx(100 * 10 / 2400, abs=1e-4)
    assert scores["opacity_pct"]["overall"] == pytest.approx(100 * 16 / 2400, abs=1e-4)
    assert scores["high_opacity_hu"] == -200


def test_lobe_score_with_known_fractions():
    # five lobes of 100 voxels each, affected 0, 5, 25, 26, 76 % -> 0 + 2 + 2 + 3 + 5 = 12
    lobes = np.repeat(np.arange(1, 6, dtype=np.uint8), 100).reshape(5, 10, 10)
    labels = np.full(lobes.shape, Label.HEALTHY_LUNG, np.uint8)
    for lobe, n in zip(range(5), (0, 5, 25, 26, 76)):
        labels[lobe].reshape(-1)[:n] = Label.GGO if n % 2 else Label.CONSOLIDATION
    result = lobe_scores(labels, lobes)
    assert result["computed"] is True and result["max"] == 25
    assert [v["score"] for v in result["lobes"].values()] == [0, 2, 2, 3, 5]
    assert list(result["lobes"]) == ["left_upper", "left_lower", "right_upper", "right_middle", "right_lower"]
    assert result["lobes"]["right_upper"]["affected_pct"] == 25.0
    assert result["total"] == 12 and "warning" not in result


def test_lobe_score_missing_lobe_and_no_lobes():
    lobes = np.ones((2, 4, 4), np.uint8)
    labels = np.full(lobes.shape, Label.HEALTHY_LUNG, np.uint8)
    result = lobe_scores(labels, lobes)
    assert result["computed"] and "right_middle" in result["warning"]
    absent = lobe_scores(labels, None, "no lobe model here")
    assert absent == {"computed": False, "reason": "no lobe model here"}


def test_missing_lung_gives_no_percentage_not_zero():
    lungs = _lungs()
    lungs[lungs == LEFT_LUNG] = 0
    labels = np.where(lungs > 0, Label.HEALTHY_LUNG, 0).astype(np.uint8)
    scores = compute_scores(labels, lungs, np.full(labels.shape, -800, np.int16))
    assert scores["opacity_pct"]["left"] is None and scores["opacity_pct"]["right"] == 0.0
    assert scores["six_zone"]["zones"]["left_upper"] == {"score": 0, "affected_pct": None, "slices": None}


def test_scores_in_report_json_and_table():
    labels = _labels(right_counts=(100, 0, 301), left_counts=(1, 200, 400))
    hu = np.where(labels >= Label.GGO, -400, -850).astype(np.int16)
    volume = Volume(hu=hu, spacing_zyx=(5.0, 0.8, 0.8))
    lungs = LungMask(_lungs(), "classical")
    lesions = LesionLabels(labels, "kmeans", "test")
    quantities = quantify(labels, lungs.labels, volume)
    report = build_report(volume, lungs, lesions, quantities, {"total": 1.0})
    scores = json.loads(json.dumps(report["scores"]))  # JSON-ready: no numpy types
    # voxels of 0.0032 mL: the 1-voxel speck (left upper) and the 100-voxel 0.32 mL patch (right upper)
    # are below the 0.5 mL smallest scored lesion, so 13 - 1 - 2 = 10
    assert scores["six_zone"]["total"] == 10 and scores["six_zone"]["min_lesion_ml"] == 0.5
    assert scores["opacity_pct"]["overall"] == pytest.approx(report["ratios_pct"]["all"], abs=1e-3)
    assert scores["lobe_score"]["computed"] is False and "LTRCLobes" in scores["lobe_score"]["reason"]
    th = scores["research_thresholds"]
    assert (th["vr_all_oxygen_need_pct"], th["vr_all_oxygen_need_auc"], th["vr_all_diagnosis_pct"]) == (2.5, 0.92, 1.5)
    assert "not validated" in th["label"] and "context only" in th["label"]
    rows = dict(summary_rows(report))
    assert rows["Six-zone score"].startswith("10/24")
    assert rows["Lobe score"].startswith("not computed")
    assert "context only" in rows["Research thresholds"]
    assert "Six-zone score" in format_table(report)


def test_specks_below_the_smallest_scored_lesion_do_not_make_a_zone_involved():
    # one voxel of GGO in the left upper zone: 1 mL voxels -> a 1 mL blob counts, 0.1 mL voxels -> a
    # 0.1 mL speck does not (MIN_SCORED_LESION_ML = 0.5), while the opacity percentage still counts it
    from coviax.scores import MIN_SCORED_LESION_ML

    labels = _labels(right_counts=(0, 0, 0), left_counts=(1, 0, 0))
    hu = np.full(labels.shape, -800, np.int16)
    assert MIN_SCORED_LESION_ML == 0.5
    big_voxels = compute_scores(labels, _lungs(), hu, voxel_ml=1.0)
    assert big_voxels["six_zone"]["total"] == 1 and big_voxels["six_zone"]["min_lesion_ml"] == 0.5
    small_voxels = compute_scores(labels, _lungs(), hu, voxel_ml=0.1)
    assert small_voxels["six_zone"]["total"] == 0
    assert small_voxels["six_zone"]["zones"]["left_upper"]["affected_pct"] == 0.25
    assert small_voxels["opacity_pct"]["left"] == pytest.approx(100 / 1200, abs=1e-4)
    # five 0.1 mL voxels in one blob make 0.5 mL: involved again
    labels = _labels(right_counts=(0, 0, 0), left_counts=(5, 0, 0))
    assert compute_scores(labels, _lungs(), hu, voxel_ml=0.1)["six_zone"]["total"] == 1
