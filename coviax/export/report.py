"""``report.json`` (schema ``coviax.report/1``, documented field by field in the README) and the terminal table."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import coviax
from coviax.scores import scores_for

SCHEMA = "coviax.report/1"


def build_report(volume, lungs, lesions, quantities, timings: dict, study_label: str | None = None) -> dict:
    """The report as a plain dict. Holds no patient identifier (only the series UID)."""
    return {
        "schema": SCHEMA,
        "notice": coviax.RESEARCH_USE_NOTICE,
        "software": {"name": "coviax", "version": coviax.__version__},
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "study_label": study_label,
        "input": {
            "format": volume.source_format,
            "slices": int(volume.shape[0]),
            "shape_zyx": [int(s) for s in volume.shape],
            "spacing_mm": [round(float(s), 6) for s in volume.spacing_zyx],
            "series_uid": volume.series_uid,
            "warnings": list(volume.warnings),
        },
        "lungs": {"method": lungs.method, "notes": list(lungs.notes), "volume_ml": quantities.lung_ml},
        "lesions": {
            "engine": lesions.engine,
            "model": lesions.model,
            "notes": list(lesions.notes),
            "volume_ml": quantities.lesion_ml,
        },
        "ratios_pct": quantities.ratios_pct,
        "scores": scores_for(volume, lungs, lesions),
        "blob_count": quantities.blob_count,
        "blobs": [b.to_dict() for b in quantities.blobs],
        "timings_s": {k: round(float(v), 3) for k, v in timings.items()},
        "artifacts": {},
    }


def write_report(report: dict, path: str | Path) -> Path:
    path = Path(path)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a report
    return path


def summary_rows(report: dict) -> list[tuple[str, str]]:
    lung = report["lungs"]["volume_ml"]
    les = report["lesions"]["volume_ml"]
    ratios = report["ratios_pct"]
    rows = [
        ("Lung volume (L)", f"{lung['total'] / 1000:.2f}  (right {lung['right'] / 1000:.2f}, left {lung['left'] / 1000:.2f})"),
        ("GGO volume (L)", f"{les['ggo'] / 1000:.3f}"),
        ("Consolidation volume (L)", f"{les['consolidation'] / 1000:.3f}"),
        ("VRall (%)", f"{ratios['all']:.2f}"),
        ("VRggo (%)", f"{ratios['ggo']:.2f}"),
        ("VRcs (%)", f"{ratios['consolidation']:.2f}"),
        ("Lesion blobs", str(report["blob_count"])),
    ]
    rows += score_rows(report.get("scores"))
    for blob in report["blobs"][:3]:
        c = blob["centroid_patient_mm"]
        rows.append(
            (f"Blob {blob['rank']} ({blob['class']})", f"{blob['volume_ml']:.1f} mL at LPS ({c[0]:.0f}, {c[1]:.0f}, {c[2]:.0f}) mm")
        )
    rows += [
        ("Lung method", report["lungs"]["method"]),
        ("Lesion engine", f"{report['lesions']['engine']} ({report['lesions']['model']})"),
        ("Time (s)", f"{report['timings_s'].get('total', 0):.1f}"),
    ]
    return rows


def score_rows(scores: dict | None) -> list[tuple[str, str]]:
    """The severity scores (coviax.scores) as table rows; none for a report without scores."""
    if not scores:
        return []

    def pct(v) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    po, pho = scores["opacity_pct"], scores["high_opacity_pct"]
    zones = scores["six_zone"]["zones"]
    lobe = scores["lobe_score"]
    th = scores["research_thresholds"]
    return [
        ("Opacity (%)", f"{pct(po['overall'])}  (right {pct(po['right'])}, left {pct(po['left'])})"),
        (f"High opacity >{scores['high_opacity_hu']} HU (%)",
         f"{pct(pho['overall'])}  (right {pct(pho['right'])}, left {pct(pho['left'])})"),
        ("Six-zone score", f"{scores['six_zone']['total']}/{scores['six_zone']['max']}  (R/L upper "
         f"{zones['right_upper']['score']}/{zones['left_upper']['score']}, middle {zones['right_middle']['score']}/"
         f"{zones['left_middle']['score']}, lower {zones['right_lower']['score']}/{zones['left_lower']['score']})"),
        ("Lobe score", f"{lobe['total']}/{lobe['max']}" if lobe.get("computed") else f"not computed ({lobe['reason']})"),
        ("Research thresholds", f"context only, not clinical: thesis cut-offs on VRall {th['vr_all_diagnosis_pct']} % "
         f"(diagnosis), {th['vr_all_oxygen_need_pct']} % (oxygen need, AUC {th['vr_all_oxygen_need_auc']}, "
         f"{th['cohort_patients']} patients)"),
    ]


def format_table(report: dict) -> str:
    rows = summary_rows(report)
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines.append(report["notice"])
    return "\n".join(lines)
