"""The cohort table: one row a scan of the manifest, in its order, with the change between timepoints.

Columns: the manifest's (id, subject, timepoint, site, scan, reader_*), then status (done, failed,
not run), attempts, error, the quantities (VRall, VRggo, VRcs in %, GGO, consolidation, lesion and
lung mL), the lung method and engine, the QC flags (``;``-separated names, see ``coviax.qc``) and
their values, and the change from the subject's previous timepoint that is done:
``baseline_timepoint`` (the one compared with), ``d_vr_all_pp`` (VRall, percentage points),
``d_ggo_ml`` and ``d_consolidation_ml``. Written as ``cohort.csv`` and, with pyarrow installed,
``cohort.parquet`` (same columns; pyarrow is in the ``cohort`` extra).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from coviax_cohort.manifest import ScanRow, timepoint_order
from coviax_cohort.state import ScanState
from coviax.qc import flags_for_error

COLUMNS = [
    "id", "subject", "timepoint", "site", "scan", "status", "attempts", "error",
    "vr_all_pct", "vr_ggo_pct", "vr_cs_pct", "ggo_ml", "consolidation_ml", "lesion_ml", "lung_ml",
    "lung_method", "engine", "slices", "spacing_mm", "qc_flags", "qc_slice_thickness_mm", "qc_spacing_ratio",
    "qc_contrast", "qc_air_noise_hu", "qc_edge_lung_pct", "baseline_timepoint", "d_vr_all_pp", "d_ggo_ml",
    "d_consolidation_ml", "seconds", "node",
]
NUMERIC = {"attempts", "vr_all_pct", "vr_ggo_pct", "vr_cs_pct", "ggo_ml", "consolidation_ml", "lesion_ml", "lung_ml",
           "slices", "qc_slice_thickness_mm", "qc_spacing_ratio", "qc_air_noise_hu", "qc_edge_lung_pct",
           "d_vr_all_pp", "d_ggo_ml", "d_consolidation_ml", "seconds"}


def collect(rows: list[ScanRow], out_dir: Path) -> list[dict]:
    """The table's rows from the scans' folders (done, failed or not run yet), with the deltas."""
    table = []
    for row in rows:
        state = ScanState(out_dir, row.id)
        saved = state.load()
        record = {c: None for c in COLUMNS}
        record.update(id=row.id, subject=row.subject, timepoint=row.timepoint, site=row.site, scan=row.scan,
                      attempts=int(saved.get("attempts", 0)))
        if state.is_done(row.scan):
            result = state.result()
            record.update({k: v for k, v in result.items() if k in COLUMNS and k not in ("attempts",)})
            record["status"], record["error"] = "done", ""
        else:
            error = saved.get("last_error") or ""
            record["status"] = "failed" if error else "not run"
            record["error"] = error
            record["qc_flags"] = ";".join(flags_for_error(error))
        record.update(row.readers)
        table.append(record)
    add_deltas(table, timepoint_order(rows))
    return table


def add_deltas(table: list[dict], order: dict[str, float]) -> None:
    """Each done row gets the change from its subject's previous done timepoint (none for the first)."""
    by_subject: dict[str, list[dict]] = {}
    for r in table:
        if r["status"] == "done":
            by_subject.setdefault(r["subject"], []).append(r)
    for scans in by_subject.values():
        scans.sort(key=lambda r: order[r["timepoint"]])
        for before, after in zip(scans, scans[1:]):
            after["baseline_timepoint"] = before["timepoint"]
            after["d_vr_all_pp"] = round(after["vr_all_pct"] - before["vr_all_pct"], 4)
            after["d_ggo_ml"] = round(after["ggo_ml"] - before["ggo_ml"], 3)
            after["d_consolidation_ml"] = round(after["consolidation_ml"] - before["consolidation_ml"], 3)


def write_table(table: list[dict], out_dir: Path) -> dict[str, Path]:
    """cohort.csv and cohort.parquet (when pyarrow is installed) into ``out_dir``."""
    columns = COLUMNS + sorted({k for r in table for k in r} - set(COLUMNS))
    written = {}
    csv_path = Path(out_dir) / "cohort.csv"
    tmp = csv_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for r in table:
            writer.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})
    tmp.replace(csv_path)
    written["csv"] = csv_path
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return written
    arrays = {}
    for c in columns:
        values = [r.get(c) for r in table]
        numeric = c in NUMERIC or c.startswith("reader_")
        arrays[c] = pa.array([None if v is None else float(v) for v in values] if numeric else
                             [None if v is None else str(v) for v in values],
                             type=pa.float64() if numeric else pa.string())
    parquet = Path(out_dir) / "cohort.parquet"
    pq.write_table(pa.table(arrays), str(parquet) + ".tmp")
    Path(str(parquet) + ".tmp").replace(parquet)
    written["parquet"] = parquet
    return written


def read_table(out_dir: Path) -> list[dict]:
    """cohort.csv back as rows (numbers as floats, empty cells as None)."""
    with open(Path(out_dir) / "cohort.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k, v in r.items():
            if v == "":
                r[k] = None
            elif k in NUMERIC or k.startswith("reader_"):
                r[k] = float(v)
    return rows


def write_summary(out_dir: Path, summary: dict) -> Path:
    path = Path(out_dir) / "cohort_run.json"
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path
