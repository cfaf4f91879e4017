"""Severity scores from a label volume: opacity percentages, six-zone score, lobe score.

What each number means for a reader is in docs/REPORT.md; in short:

- **Percent of opacity** (PO): (GGO + consolidation) / lung cavity, per lung and
  overall (overall = the report's VRall).
- **Percent of high opacity** (PHO): lesion voxels above -200 HU, plus every
  consolidation voxel whatever its HU, over the lung cavity.
- **Six-zone score**: each lung cut into upper, middle and lower thirds of its
  own craniocaudal extent (by slice position); each zone scores 0-4 by the
  fraction of its lung voxels that are GGO or consolidation; total 0-24.
- **Lobe score** (Chung et al. 2020, Pan et al. 2020): each lobe 0-5; total
  0-25; only when a lobe model (lungmask LTRCLobes) ran.

The score bins are applied in exact integer arithmetic on voxel counts, so a
fraction of exactly 25 % is never mis-binned by rounding:

=========  ==========================  ===========================
score      six-zone (affected f)       lobe (affected f)
=========  ==========================  ===========================
0          f = 0                       f = 0
1          0 < f < 25 %                0 < f < 5 %
2          25 % <= f <= 50 %           5 % <= f <= 25 %
3          50 % < f <= 75 %            25 % < f <= 50 %
4          f > 75 %                    50 % < f <= 75 %
5          --                          f > 75 %
=========  ==========================  ===========================

The published bins are written with integer percentages ("<25 %, 25-50 %,
50-75 %, >75 %"; "<5 %, 5-25 %, 26-50 %, 51-75 %, >75 %"); the table above is
how we close them for continuous fractions: the lower edge of the first bin
after "<" is inclusive, every other bin includes its upper edge.

The thesis's thresholds on VRall are included in the output *for context only*:
they come from one 60-patient research cohort and are not validated clinical
cut-offs.
"""

from __future__ import annotations

import numpy as np

from coviax.labels import LEFT_LUNG, RIGHT_LUNG, Label

#: HU above which a lesion voxel counts as high opacity.
HIGH_OPACITY_HU = -200
#: The smallest lesion that makes a zone or lobe "involved": a 26-connected lesion blob of at
#: least 0.5 mL, about a 1 cm sphere -- the size below which readers do not call a focus an
#: opacity. Smaller specks (partial volume at the pleura, a fissure, an airway wall) still count
#: in the percentages of opacity, but not in the zone and lobe scores.
MIN_SCORED_LESION_ML = 0.5

#: Upper edges (percent, inclusive) of the six-zone bins 1..3; above the last edge scores 4.
#: Bin 1 is "< 25 %", so its edge is exclusive: handled in :func:`zone_bin`.
ZONE_EDGES_PCT = (25, 50, 75)
#: Lobe score: bin 1 is "< 5 %", bins 2..4 end at 25, 50, 75 % inclusive, above scores 5.
LOBE_EDGES_PCT = (5, 25, 50, 75)

ZONES = ("upper", "middle", "lower")

#: lungmask LTRCLobes codes.
LOBES = {1: "left_upper", 2: "left_lower", 3: "right_upper", 4: "right_middle", 5: "right_lower"}

RESEARCH_THRESHOLDS = {
    "label": (
        "Research thresholds, shown for context only: from the thesis's single 60-patient cohort, "
        "not validated, not a clinical cut-off"
    ),
    "vr_all_oxygen_need_pct": 2.5,
    "vr_all_oxygen_need_auc": 0.92,
    "vr_all_diagnosis_pct": 1.5,
    "cohort_patients": 60,
    "source": "thesis (COViaX): Youden-index cut-offs of VRall",
}


def _bin(affected: int, total: int, edges: tuple[int, ...]) -> int:
    """Score of ``affected / total`` for bins "0", "< edges[0] %", "<= edges[1] %", ..., "> edges[-1] %".

    Exact: compares ``100 * affected`` with ``edge * total`` in integers.
    """
    if total <= 0 or affected <= 0:
        return 0
    a100 = 100 * int(affected)
    total = int(total)
    if a100 < edges[0] * total:
        return 1
    for score, edge in enumerate(edges[1:], start=2):
        if a100 <= edge * total:
            return score
    return len(edges) + 1


def zone_bin(affected: int, total: int) -> int:
    """Six-zone score (0-4) of one zone: 0 %, < 25 %, 25-50 %, 50-75 %, > 75 %."""
    return _bin(affected, total, ZONE_EDGES_PCT)


def lobe_bin(affected: int, total: int) -> int:
    """Lobe score (0-5, Chung/Pan): 0 %, < 5 %, 5-25 %, 26-50 %, 51-75 %, > 75 %."""
    return _bin(affected, total, LOBE_EDGES_PCT)


def _pct(part: int, whole: int) -> float | None:
    return round(100.0 * part / whole, 4) if whole > 0 else None


def zone_of_slices(slices: np.ndarray, superior_sign: float) -> np.ndarray:
    """Zone index (0 upper, 1 middle, 2 lower) of each slice in ``slices`` (sorted z indices of one lung).

    The lung's extent runs from the first to the last slice that holds it; slice
    k of n (counted from the most superior) has its centre at (k + 0.5) / n of
    the extent and falls in third floor(3 (k + 0.5) / n) -- integer arithmetic:
    (6k + 3) // (2n).
    """
    z0, z1 = int(slices.min()), int(slices.max())
    n = z1 - z0 + 1
    k = (z1 - slices) if superior_sign > 0 else (slices - z0)  # 0 = most superior slice
    return np.minimum((6 * k + 3) // (2 * n), 2)


def compute_scores(
    labels: np.ndarray,
    lung_labels: np.ndarray,
    hu: np.ndarray,
    superior_sign: float = 1.0,
    lobes: np.ndarray | None = None,
    lobe_reason: str | None = None,
    voxel_ml: float | None = None,
) -> dict:
    """All severity scores as a JSON-ready dict (the report's ``scores``).

    Parameters
    ----------
    labels:
        uint8 lesion label volume (z y x, codes of :class:`coviax.labels.Label`).
    lung_labels:
        uint8 lung mask of the same shape (1 right, 2 left): the denominators.
    hu:
        the CT in HU (same shape), for the high-opacity fraction.
    superior_sign:
        +1 if a higher z index is more superior (``Volume.superior_axis_sign``).
    lobes:
        optional lobe label volume (LTRCLobes codes 1-5).
    lobe_reason:
        why there are no lobes (goes into ``lobe_score.reason``).
    voxel_ml:
        volume of one voxel in mL; with it, lesion blobs smaller than
        :data:`MIN_SCORED_LESION_ML` do not count in the zone and lobe scores.

    Raises
    ------
    ValueError
        if the shapes differ.
    """
    if labels.shape != lung_labels.shape or labels.shape != hu.shape:
        raise ValueError(f"shape mismatch: labels {labels.shape}, lungs {lung_labels.shape}, hu {hu.shape}")
    lesion = labels >= Label.GGO
    high = (lesion & (hu > HIGH_OPACITY_HU)) | (labels == Label.CONSOLIDATION)
    scored = scored_lesions(lesion, voxel_ml)

    per_lung, zones, (total_lung, total_lesion, total_high), zone_total = _lungs_and_zones(
        lung_labels, lesion, scored, high, superior_sign)
    lobe_labels = np.where(scored, labels, np.uint8(Label.HEALTHY_LUNG)) if scored is not lesion else labels
    return {
        "opacity_pct": {
            "overall": _pct(total_lesion, total_lung),
            **{k: v["opacity_pct"] for k, v in per_lung.items()},
        },
        "high_opacity_pct": {
            "overall": _pct(total_high, total_lung),
            **{k: v["high_opacity_pct"] for k, v in per_lung.items()},
        },
        "high_opacity_hu": HIGH_OPACITY_HU,
        "six_zone": {"total": zone_total, "max": 24, "zones": zones, "min_lesion_ml": _min_ml(voxel_ml)},
        "lobe_score": lobe_scores(lobe_labels, lobes, lobe_reason),
        "research_thresholds": dict(RESEARCH_THRESHOLDS),
    }


def _lungs_and_zones(lung_labels: np.ndarray, lesion: np.ndarray, scored: np.ndarray, high: np.ndarray,
                     superior_sign: float) -> tuple[dict, dict, tuple[int, int, int], int]:
    """(percentages per lung, the six zones, total (lung, lesion, high-opacity) voxels, six-zone total)."""
    per_lung: dict[str, dict] = {}
    zones: dict[str, dict] = {}
    total_lung = total_lesion = total_high = 0
    zone_total = 0
    for name, code in (("right", RIGHT_LUNG), ("left", LEFT_LUNG)):
        counts, lung_zones = _one_lung(lung_labels == code, lesion, scored, high, superior_sign)
        n_lung, n_lesion, n_high = counts
        total_lung += n_lung
        total_lesion += n_lesion
        total_high += n_high
        per_lung[name] = {"opacity_pct": _pct(n_lesion, n_lung), "high_opacity_pct": _pct(n_high, n_lung)}
        for zone, entry in lung_zones.items():
            zone_total += entry["score"]
            zones[f"{name}_{zone}"] = entry
    return per_lung, zones, (total_lung, total_lesion, total_high), zone_total


def _one_lung(lung: np.ndarray, lesion: np.ndarray, scored: np.ndarray, high: np.ndarray,
              superior_sign: float) -> tuple[tuple[int, int, int], dict[str, dict]]:
    """One lung's (lung, lesion, high-opacity) voxel counts and its three zones (upper, middle, lower):
    each zone's score, affected percentage and slice range."""
    lung_per_slice = np.count_nonzero(lung, axis=(1, 2))
    lesion_per_slice = np.count_nonzero(lesion & lung, axis=(1, 2))
    scored_per_slice = np.count_nonzero(scored & lung, axis=(1, 2)) if scored is not lesion else lesion_per_slice
    high_per_slice = np.count_nonzero(high & lung, axis=(1, 2))
    counts = int(lung_per_slice.sum()), int(lesion_per_slice.sum()), int(high_per_slice.sum())
    slices = np.flatnonzero(lung_per_slice)
    zone_idx = zone_of_slices(slices, superior_sign) if slices.size else np.zeros(0, dtype=int)
    zones = {}
    for zi, zone in enumerate(ZONES):
        chosen = slices[zone_idx == zi]
        z_lung = int(lung_per_slice[chosen].sum())
        z_lesion = int(lesion_per_slice[chosen].sum())
        zones[zone] = {
            "score": zone_bin(int(scored_per_slice[chosen].sum()), z_lung),
            "affected_pct": _pct(z_lesion, z_lung),
            "slices": [int(chosen.min()), int(chosen.max())] if chosen.size else None,
        }
    return counts, zones


def scored_lesions(lesion: np.ndarray, voxel_ml: float | None) -> np.ndarray:
    """Lesion voxels in blobs of at least :data:`MIN_SCORED_LESION_ML` (all of them without ``voxel_ml``).

    The same voxels as ``cc3d.dust(lesion, min_voxels, connectivity=26)``, computed inside the lesions'
    bounding box with a keep-table lookup instead of ``np.isin`` over the whole volume: 505-slice bench
    scan 4.4 s -> about 1 s on 2 cores.
    """
    if voxel_ml is None or not lesion.any():
        return lesion
    import cc3d

    min_voxels = int(np.ceil(MIN_SCORED_LESION_ML / voxel_ml))
    box = tuple(slice(int(i[0]), int(i[-1]) + 1)
                for i in (np.flatnonzero(lesion.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))))
    components = cc3d.connected_components(lesion[box], connectivity=26)
    keep = cc3d.statistics(components, no_slice_conversion=True)["voxel_counts"] >= min_voxels
    keep[0] = False
    scored = np.zeros_like(lesion)
    scored[box] = keep[components]
    return scored


def _min_ml(voxel_ml: float | None) -> float | None:
    return MIN_SCORED_LESION_ML if voxel_ml is not None else None


def lobe_scores(labels: np.ndarray, lobes: np.ndarray | None, reason: str | None = None) -> dict:
    """Chung/Pan lobe score, or ``{"computed": False, "reason": ...}`` without a lobe mask."""
    if lobes is None:
        return {"computed": False, "reason": reason or "no lobe segmentation: the lobe model (lungmask LTRCLobes) did not run"}
    if lobes.shape != labels.shape:
        return {"computed": False, "reason": f"lobe mask shape {lobes.shape} differs from the labels {labels.shape}"}
    lesion = labels >= Label.GGO
    lobe_counts = np.bincount(lobes.ravel(), minlength=6)
    lesion_counts = np.bincount(lobes[lesion].ravel(), minlength=6)
    per_lobe = {}
    total = 0
    for code, name in LOBES.items():
        n, a = int(lobe_counts[code]), int(lesion_counts[code])
        score = lobe_bin(a, n)
        total += score
        per_lobe[name] = {"score": score, "affected_pct": _pct(a, n)}
    missing = [name for code, name in LOBES.items() if lobe_counts[code] == 0]
    result = {"computed": True, "total": total, "max": 25, "lobes": per_lobe}
    if missing:
        result["warning"] = "lobes not found by the lobe model (scored 0): " + ", ".join(missing)
    return result


def scores_for(volume, lungs, lesions) -> dict:
    """:func:`compute_scores` on pipeline objects (Volume, LungMask, LesionLabels)."""
    reason = None
    if lungs.lobes is None:
        reason = (f"lung method {lungs.method} gives no lobes; the lobe score needs the lungmask LTRCLobes model")
    return compute_scores(lesions.labels, lungs.labels, volume.hu, volume.superior_axis_sign, lungs.lobes, reason,
                          voxel_ml=volume.voxel_volume_ml)
