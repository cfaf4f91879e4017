"""Scores of ``coviax eval`` (:mod:`coviax_research.evaluate`): one predicted label volume against the
true labels (:func:`case_metrics`), and an engine's cases summarised (:func:`summarise`).

Per case and engine
    Dice of GGO, of consolidation and of all lesions (GGO + consolidation as
    one class) -- None when the truth has none of that class (healthy cases;
    such cases are left out of the mean Dice); predicted and true ratios in
    percent of the true lung; ratio error (predicted - true) in percentage
    points; volume error in mL; false-positive lesion volume (predicted
    lesion where the truth has none) in mL.

Per engine
    means of the above; ICC(2,1) (absolute agreement, single measure) of
    predicted vs true VRall over all cases and Bland-Altman bias and 95 %
    limits of agreement (predicted - true) from :mod:`coviax_research.stats`; mean
    false-positive lesion volume on the healthy cases.
"""

from __future__ import annotations

import numpy as np

from coviax.labels import Label


def dice(pred: np.ndarray, truth: np.ndarray) -> float | None:
    """Dice of two boolean masks; None when the truth is empty (undefined, left out of means)."""
    t = int(np.count_nonzero(truth))
    if t == 0:
        return None
    p = int(np.count_nonzero(pred))
    both = int(np.count_nonzero(pred & truth))
    return 2.0 * both / (p + t)


def case_metrics(pred: np.ndarray, truth: np.ndarray, lung_labels: np.ndarray, voxel_ml: float,
                 pred_lung: np.ndarray | None = None) -> dict:
    """Metrics of one predicted label volume against the true labels (codes of :class:`Label`).

    Without ``pred_lung`` the engine ran with the true lung mask and both
    ratios use the true lung cavity (``lung_labels > 0``) as denominator. With
    ``pred_lung`` (the cavity the engine ran with, end to end) the predicted
    ratio is over that cavity and the true ratio over the true one, as a user
    would compare them.
    """
    if pred.shape != truth.shape or truth.shape != lung_labels.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape}, truth {truth.shape}, lungs {lung_labels.shape}")
    if pred_lung is not None and pred_lung.shape != truth.shape:
        raise ValueError(f"shape mismatch: predicted lung {pred_lung.shape}, truth {truth.shape}")
    true_lung = lung_labels > 0
    box = _bbox(true_lung if pred_lung is None else true_lung | pred_lung)
    p, t = pred[box], truth[box]
    lung = int(np.count_nonzero(true_lung[box]))
    pred_lung_count = lung if pred_lung is None else int(np.count_nonzero(pred_lung[box]))
    p_ggo, t_ggo = p == Label.GGO, t == Label.GGO
    p_cs, t_cs = p == Label.CONSOLIDATION, t == Label.CONSOLIDATION
    p_all, t_all = p_ggo | p_cs, t_ggo | t_cs
    n = {
        "pred_ggo": int(np.count_nonzero(p_ggo)), "pred_cs": int(np.count_nonzero(p_cs)),
        "true_ggo": int(np.count_nonzero(t_ggo)), "true_cs": int(np.count_nonzero(t_cs)),
    }

    def pct(count: int, denominator: int = lung) -> float:
        return 100.0 * count / denominator if denominator else 0.0

    pred_ratios = {"all": pct(n["pred_ggo"] + n["pred_cs"], pred_lung_count), "ggo": pct(n["pred_ggo"], pred_lung_count),
                   "consolidation": pct(n["pred_cs"], pred_lung_count)}
    true_ratios = {"all": pct(n["true_ggo"] + n["true_cs"]), "ggo": pct(n["true_ggo"]), "consolidation": pct(n["true_cs"])}
    return {
        "dice_ggo": dice(p_ggo, t_ggo),
        "dice_consolidation": dice(p_cs, t_cs),
        "dice_all": dice(p_all, t_all),
        "pred_ratios_pct": pred_ratios,
        "true_ratios_pct": true_ratios,
        "ratio_error_pp": {k: pred_ratios[k] - true_ratios[k] for k in pred_ratios},
        "volume_error_ml": {
            "ggo": (n["pred_ggo"] - n["true_ggo"]) * voxel_ml,
            "consolidation": (n["pred_cs"] - n["true_cs"]) * voxel_ml,
        },
        "pred_lesion_ml": (n["pred_ggo"] + n["pred_cs"]) * voxel_ml,
        "fp_lesion_ml": int(np.count_nonzero(p_all & ~t_all)) * voxel_ml,
    }


def mean_or_none(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def summarise(cases: list[dict]) -> dict:
    """Per-engine summary of per-case metrics (each with ``severity`` and the keys of :func:`case_metrics`)."""
    from coviax_research.stats import StatsInputError, bland_altman, icc2_1

    pred = np.array([c["pred_ratios_pct"]["all"] for c in cases], dtype=float)
    true = np.array([c["true_ratios_pct"]["all"] for c in cases], dtype=float)
    notes = []
    icc = None
    ba = None
    try:
        r = icc2_1(np.column_stack([pred, true]))
        icc = {"icc": r.icc, "ci_low": r.ci_low, "ci_high": r.ci_high, "p_value": r.p_value}
    except StatsInputError as exc:
        notes.append(f"ICC(2,1) not computed: {exc}")
    try:
        b = bland_altman(pred, true)
        ba = {"bias": b.bias, "sd": b.sd, "loa_low": b.loa_low, "loa_high": b.loa_high,
              "bias_ci_low": b.bias_ci_low, "bias_ci_high": b.bias_ci_high}
    except StatsInputError as exc:
        notes.append(f"Bland-Altman not computed: {exc}")
    healthy = [c for c in cases if c["severity"] == "none"]
    return {
        "n_cases": len(cases),
        "dice_ggo_mean": mean_or_none(c["dice_ggo"] for c in cases),
        "dice_consolidation_mean": mean_or_none(c["dice_consolidation"] for c in cases),
        "dice_all_mean": mean_or_none(c["dice_all"] for c in cases),
        "abs_ratio_error_pp_mean": {k: mean_or_none(abs(c["ratio_error_pp"][k]) for c in cases)
                                    for k in ("all", "ggo", "consolidation")},
        "abs_volume_error_ml_mean": {k: mean_or_none(abs(c["volume_error_ml"][k]) for c in cases)
                                     for k in ("ggo", "consolidation")},
        "icc_vr_all": icc,
        "bland_altman_vr_all": ba,
        "fp_lesion_ml_healthy_mean": mean_or_none(c["fp_lesion_ml"] for c in healthy),
        "seconds_per_case_mean": mean_or_none(c["seconds"] for c in cases),
        "notes": notes,
    }


def _bbox(mask: np.ndarray) -> tuple[slice, slice, slice]:
    if not mask.any():
        return (slice(0, 0),) * 3  # type: ignore[return-value]
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        nz = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return tuple(box)  # type: ignore[return-value]

