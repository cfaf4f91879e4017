"""Accuracy on real patients: the scans of :mod:`coviax_research.realdata`, scored per patient.

Two kinds of rows, both for every (lung method, lesion engine) pair asked for:

Real scans (no COVID-19 in any of them), :func:`score_real_scan`
    what ``coviax segment`` reports on a real person's lungs: VRall; VRall *beyond the
    known lesions* (lesion voxels outside the outlined tumour grown by 3 mm, minus the
    volume the source table gives for an unoutlined tumour; what a healthy lung should
    score: about 0); the six-zone score; lesion mL within 6 mm of the lung mask's edge
    (where false lesions gather); the lung mask against the reference lung (Dice; see
    :func:`coviax_research.realdata.reference_lung_mask`, not the product's method); mL of
    TotalSegmentator's heart inside the lung mask; and for outlined tumours the share
    inside the lung mask, the share labelled opacity and the share of the dense core
    (> -100 HU) labelled consolidation.

Phantoms of held-out patients, :func:`score_heldout_phantoms`
    hybrid phantoms (evaluation seeds) made on the reference lung of each held-out patient
    that allows them: lesion metrics as in :mod:`coviax_research.eval_metrics` with the true lung, and
    end to end with the product's own lung mask.

Each row names the patient's role: ``heldout`` rows are people no shipped model saw.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

from coviax.labels import Label

#: Lesion voxels within this distance of the lung mask's edge count as "at the edge".
EDGE_MM = 6.0
#: Lesion voxels within this distance of an outlined tumour belong to it (outlines are drawn by hand).
GTV_MARGIN_MM = 3.0
DENSE_CORE_HU = -100.0
#: Phantoms per held-out patient: (seed, severity, noise sigma HU); seeds from coviax_research.phantom.EVAL_SEEDS.
HELDOUT_PHANTOMS = ((1050, "none", 0.0), (1051, "mild", 25.0), (1052, "moderate", 0.0), (1053, "severe", 10.0))


def _grow(mask: np.ndarray, mm: float, spacing) -> np.ndarray:
    if not mask.any():
        return mask
    return ndimage.distance_transform_edt(~mask, sampling=spacing) <= mm


def _edge_band(cavity: np.ndarray, mm: float, spacing) -> np.ndarray:
    """Voxels of the cavity within ``mm`` of its outside, measured in-plane and through slices."""
    return cavity & (ndimage.distance_transform_edt(cavity, sampling=spacing) <= mm)


def _dice(a: np.ndarray, b: np.ndarray) -> float | None:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else None


def score_real_scan(case, lungs_method: str, engine, lung_weights: str | None = None) -> dict:
    """One real scan through the product's lungs and lesion engine; see the module docstring."""
    from coviax_research import realdata
    from coviax.lungs import segment_lungs
    from coviax.scores import compute_scores

    volume = realdata.load_volume(case)
    ml = volume.voxel_volume_ml
    spacing = volume.spacing_zyx
    lungs = segment_lungs(volume, lungs_method, weights=lung_weights)
    cavity = lungs.cavity
    labels = engine.segment(volume, lungs).labels
    lesion = labels >= Label.GGO
    reference = realdata.reference_lung_mask(case, volume)
    gtv = realdata.gtv_mask(case, volume)
    lung_ml = float(cavity.sum()) * ml
    known = _grow(gtv, GTV_MARGIN_MM, spacing) if gtv is not None else np.zeros_like(lesion)
    beyond_ml = max(0.0, float((lesion & ~known).sum()) * ml - case.known_lesion_ml)
    scores = compute_scores(labels, lungs.labels, volume.hu, volume.superior_axis_sign, voxel_ml=ml)
    row = {
        "case": case.id, "patient": case.patient, "role": case.role, "lungs": lungs.method,
        "lung_ml": round(lung_ml, 1), "reference_lung_ml": round(float(reference.sum()) * ml, 1),
        "lung_dice_vs_reference": _dice(cavity, reference),
        "lesion_ml": round(float(lesion.sum()) * ml, 2),
        "vr_all_pct": 100.0 * float(lesion.sum()) / max(1, int(cavity.sum())),
        "vr_beyond_known_pct": 100.0 * beyond_ml / lung_ml if lung_ml else None,
        "known_lesion_ml": case.known_lesion_ml,
        "six_zone": scores["six_zone"]["total"] if case.whole_lungs else None,
        "edge_lesion_ml": round(float((lesion & _edge_band(cavity, EDGE_MM, spacing) & ~known).sum()) * ml, 2),
    }
    heart = realdata.heart_mask(case, volume)
    if heart is not None:
        row["heart_in_lung_ml"] = round(float((heart & cavity).sum()) * ml, 2)
    if gtv is not None and gtv.any():
        n = int(gtv.sum())
        core = gtv & (volume.hu > DENSE_CORE_HU)
        row["tumour"] = {
            "outlined_ml": round(n * ml, 1),
            "inside_lung_pct": 100.0 * int((gtv & cavity).sum()) / n,
            "opacity_pct": 100.0 * int((gtv & lesion).sum()) / n,
            "core_consolidation_pct": (100.0 * int((core & (labels == Label.CONSOLIDATION)).sum()) / int(core.sum())
                                       if core.any() else None),
        }
    return row


def score_heldout_phantoms(case, lungs_method: str, engine, lung_weights: str | None = None) -> list[dict]:
    """Phantoms on one held-out patient's reference lung: true-lung and end-to-end metrics per phantom."""
    from coviax_research import realdata
    from coviax_research.eval_metrics import case_metrics
    from coviax.lungs import LungMask, segment_lungs
    from coviax_research.phantom import EVAL_SEEDS, make_phantom

    volume = realdata.load_volume(case)
    reference = realdata.reference_lung_mask(case, volume).astype(np.uint8)
    rows = []
    for seed, severity, noise in HELDOUT_PHANTOMS:
        assert seed in EVAL_SEEDS
        phantom = make_phantom(volume, seed, severity, noise_sigma_hu=noise,
                               lungs=LungMask(labels=reference, method="reference"))
        ml = phantom.volume.voxel_volume_ml
        true_lung = phantom.lungs
        lesion_only = case_metrics(engine.segment(phantom.volume, true_lung).labels, phantom.labels,
                                   true_lung.labels, ml)
        own = segment_lungs(phantom.volume, lungs_method, weights=lung_weights)
        end_to_end = case_metrics(engine.segment(phantom.volume, own).labels, phantom.labels, true_lung.labels, ml,
                                  pred_lung=own.cavity)
        truth = phantom.truth
        pleural = _edge_band(true_lung.cavity, EDGE_MM, phantom.volume.spacing_zyx) & (
            phantom.labels == Label.CONSOLIDATION)
        rows.append({
            "case": case.id, "patient": case.patient, "seed": seed, "severity": severity, "noise_sigma_hu": noise,
            "true_vr_all_pct": truth["ratios_pct"]["all"],
            "true_lesion_ml": truth["volumes_ml"]["lesion"], "true_consolidation_ml": truth["volumes_ml"]["consolidation"],
            "lung_dice": _dice(own.cavity, true_lung.cavity),
            "pleural_consolidation_inside_pct": (100.0 * int((pleural & own.cavity).sum()) / int(pleural.sum())
                                                 if pleural.any() else None),
            "true_lung": lesion_only, "end_to_end": end_to_end,
        })
    return rows


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def summarise_phantoms(rows: list[dict], key: str) -> dict:
    """Means over held-out phantoms: Dice, VRall error, and lesion / consolidation volume error in percent."""
    def rel(row, pred_key, true_key):
        true = row[true_key]
        if true <= 0:
            return None
        m = row[key]
        if pred_key == "lesion":
            pred = m["pred_lesion_ml"]
        else:
            pred = true + m["volume_error_ml"]["consolidation"]
        return 100.0 * (pred - true) / true

    return {
        "dice_ggo": _mean(r[key]["dice_ggo"] for r in rows),
        "dice_consolidation": _mean(r[key]["dice_consolidation"] for r in rows),
        "mean_abs_vr_all_error_pp": _mean(abs(r[key]["ratio_error_pp"]["all"]) for r in rows),
        "max_abs_vr_all_error_pp": max((abs(r[key]["ratio_error_pp"]["all"]) for r in rows), default=None),
        "lesion_volume_error_pct": [rel(r, "lesion", "true_lesion_ml") for r in rows],
        "consolidation_volume_error_pct": [rel(r, "consolidation", "true_consolidation_ml") for r in rows],
        "healthy_fp_ml": _mean(r[key]["fp_lesion_ml"] for r in rows if r["severity"] == "none"),
    }


def evaluate_real(engine, engine_label: str, lungs_methods: tuple[str, ...], lung_weights: str | None = None,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Every available real case (and held-out phantoms) for each lung method with one engine."""
    from coviax_research import realdata

    say = progress or (lambda msg: None)
    cases = realdata.available_cases()
    out: dict = {"engine": engine_label, "cases_available": [c.id for c in cases],
                 "cases_missing": [c.id for c in realdata.CASES if c not in cases], "runs": {}}
    for method in lungs_methods:
        scans, phantoms = [], []
        for case in cases:
            row = score_real_scan(case, method, engine, lung_weights)
            scans.append(row)
            say(f"real {case.id} [{case.role}] lungs {row['lungs']}: VRall {row['vr_all_pct']:.2f} %, beyond known "
                f"{row['vr_beyond_known_pct']:.2f} %, six-zone {row['six_zone']}, edge {row['edge_lesion_ml']} mL")
            if case.role == "heldout" and case.phantoms:
                phantoms += score_heldout_phantoms(case, method, engine, lung_weights)
        out["runs"][method] = {
            "scans": scans, "heldout_phantoms": phantoms,
            "heldout_summary": {"true_lung": summarise_phantoms(phantoms, "true_lung"),
                                "end_to_end": summarise_phantoms(phantoms, "end_to_end")} if phantoms else None,
        }
    return out


def _f(v, fmt=".2f") -> str:
    return "n/a" if v is None else format(v, fmt)


_REAL_SCAN_COLUMNS = (
    "case", "role", "lung mL", "Dice vs reference lung", "VRall %", "beyond known lesions %", "six-zone",
    "lesion mL at edge (6 mm)", "heart in lung mL", "tumour inside lung %", "tumour as opacity %",
    "dense core as consolidation %")
_HELDOUT_COLUMNS = (
    "case", "seed", "severity", "true VRall %", "VRall err, true lung (pp)", "end to end (pp)",
    "lesion vol err % (e2e)", "cons vol err % (e2e)", "Dice GGO", "Dice cons", "lung Dice",
    "pleural consolidation inside %")


def _table_head(title: str, columns: tuple[str, ...], align: str) -> list[str]:
    """A titled Markdown table's first lines; ``align`` has one letter a column, l (left) or r (right)."""
    return ["", f"#### {title}", "", "| " + " | ".join(columns) + " |",
            "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"]


def real_markdown(real: dict) -> list[str]:
    """The real-patient section of eval/RESULTS.md (and the README's accuracy table)."""
    lines = [f"Engine: {real['engine']}. Cases: {', '.join(real['cases_available'])}"
             + (f"; missing (run `make data`): {', '.join(real['cases_missing'])}" if real["cases_missing"] else "")]
    for method, run in real["runs"].items():
        ran = ", ".join(sorted({r["lungs"] for r in run["scans"]}))
        # the default path: say which method auto took on this machine
        title = f"lungs `{method}`" + (f" (the default path; it ran {ran})" if method == "auto" else "")
        lines += _table_head(f"Real scans without COVID-19, {title}", _REAL_SCAN_COLUMNS, "ll" + "r" * 10)
        for r in run["scans"]:
            t = r.get("tumour", {})
            lines.append(
                f"| {r['case']} | {r['role']} | {r['lung_ml']:.0f} | {_f(r['lung_dice_vs_reference'], '.3f')} | "
                f"{_f(r['vr_all_pct'])} | {_f(r['vr_beyond_known_pct'])} | {_f(r['six_zone'], 'd')} | "
                f"{r['edge_lesion_ml']:.1f} | {_f(r.get('heart_in_lung_ml'))} | {_f(t.get('inside_lung_pct'), '.1f')} | "
                f"{_f(t.get('opacity_pct'), '.1f')} | {_f(t.get('core_consolidation_pct'), '.1f')} |")
        if run["heldout_phantoms"]:
            lines += _table_head(f"Phantoms of held-out patients, {title}", _HELDOUT_COLUMNS,
                                 "lrl" + "r" * 9)
            for r in run["heldout_phantoms"]:
                e, t = r["end_to_end"], r["true_lung"]
                lesion_err = (100.0 * (e["pred_lesion_ml"] - r["true_lesion_ml"]) / r["true_lesion_ml"]
                              if r["true_lesion_ml"] > 0 else None)
                cons_err = (100.0 * e["volume_error_ml"]["consolidation"] / r["true_consolidation_ml"]
                            if r["true_consolidation_ml"] > 0 else None)
                lines.append(
                    f"| {r['case']} | {r['seed']} | {r['severity']} | {r['true_vr_all_pct']:.2f} | "
                    f"{t['ratio_error_pp']['all']:+.2f} | {e['ratio_error_pp']['all']:+.2f} | {_f(lesion_err, '+.1f')} | "
                    f"{_f(cons_err, '+.1f')} | {_f(t['dice_ggo'], '.3f')} | {_f(t['dice_consolidation'], '.3f')} | "
                    f"{_f(r['lung_dice'], '.3f')} | {_f(r['pleural_consolidation_inside_pct'], '.1f')} |")
    return lines
