"""``coviax-client batch``: many scans from a CSV manifest, N at a time, resumable.

Manifest (CSV with a header row)::

    id,path,study_label
    p001,/data/scans/p001,
    p002,scans/p002.zip,baseline

``id`` names the scan's output folder and its row in results.csv; ``path`` is
a DICOM folder, zip or file, relative to the manifest's folder unless
absolute; ``study_label`` is optional (never a patient name or ID).

``OUT/results.csv`` is rewritten after every scan (atomically) with: id,
status (done | failed), the ratios and volumes, the job id and the error. A
rerun skips the ids already ``done``; each scan's idempotency key is derived
from the manifest path, id and scan path, so a scan whose upload finished
before a crash is picked up from the server, not analysed twice. One bad
scan never stops the batch.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from coviax_client.sdk import CoviaxClient, CoviaxClientError

RESULT_FIELDS = (
    "id", "status", "ratio_all_pct", "ratio_ggo_pct", "ratio_consolidation_pct", "lung_total_ml", "lung_right_ml",
    "lung_left_ml", "ggo_ml", "consolidation_ml", "vessels_ml", "blob_count", "job_id", "error",
)


class ManifestError(ValueError):
    pass


def read_manifest(path: Path) -> list[dict]:
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"id", "path"} - set(reader.fieldnames or [])
        if missing:
            raise ManifestError(f"{path}: the manifest needs the columns id and path (missing: {', '.join(sorted(missing))})")
        rows, seen = [], set()
        for line, row in enumerate(reader, start=2):
            scan_id, scan_path = (row.get("id") or "").strip(), (row.get("path") or "").strip()
            if not scan_id and not scan_path:
                continue
            if not scan_id or not scan_path:
                raise ManifestError(f"{path}, line {line}: id and path are both required")
            if scan_id in seen:
                raise ManifestError(f"{path}, line {line}: id {scan_id!r} appears twice")
            seen.add(scan_id)
            full = Path(scan_path) if Path(scan_path).is_absolute() else path.parent / scan_path
            rows.append({"id": scan_id, "path": str(full), "study_label": (row.get("study_label") or "").strip()})
    return rows


def read_results(path: Path) -> dict[str, dict]:
    if not Path(path).is_file():
        return {}
    with open(path, newline="") as f:
        return {row["id"]: row for row in csv.DictReader(f)}


def write_results(path: Path, rows: list[dict]) -> None:
    tmp = Path(path).with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def fingerprint(path: str) -> str:
    """Names, sizes and modification times of a scan's files: a changed scan gets a new idempotency key."""
    p = Path(path)
    try:
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        return hashlib.sha256("|".join(f"{f.relative_to(p) if p.is_dir() else f.name}:{f.stat().st_size}:"
                                       f"{f.stat().st_mtime_ns}" for f in files).encode()).hexdigest()[:16]
    except OSError:
        return "missing"


def safe_name(scan_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", scan_id)[:100] or "scan"


def run_batch(client: CoviaxClient, manifest: Path, out_dir: Path, parallel: int = 2, deidentify: bool = False,
              on_scan: Callable[[dict], None] | None = None, **options) -> dict[str, int]:
    """Run every scan of the manifest not yet done; returns counts {"done", "failed", "skipped"}."""
    manifest = Path(manifest).resolve()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scans = read_manifest(manifest)
    results_path = out_dir / "results.csv"
    previous = read_results(results_path)
    results = {s["id"]: previous[s["id"]] for s in scans if s["id"] in previous}
    todo = [s for s in scans if results.get(s["id"], {}).get("status") != "done"]
    lock = threading.Lock()
    counts = {"done": 0, "failed": 0, "skipped": len(scans) - len(todo)}

    def record(row: dict) -> None:
        with lock:
            results[row["id"]] = row
            counts[row["status"]] += 1
            write_results(results_path, [results[s["id"]] for s in scans if s["id"] in results])
        if on_scan:
            on_scan(row)

    def one(scan: dict) -> None:
        key = "batch-" + hashlib.sha256(
            f"{manifest}|{scan['id']}|{scan['path']}|{fingerprint(scan['path'])}".encode()).hexdigest()[:40]
        row = {"id": scan["id"], "status": "failed", "job_id": "", "error": ""}
        try:
            result = client.segment(scan["path"], idempotency_key=key, client_ref=scan["id"], deidentify=deidentify,
                                    study_label=scan["study_label"], **options)
            row["job_id"] = result.job_id
            client.download_all(result, out_dir / safe_name(scan["id"]))
            row.update({
                "status": "done",
                "ratio_all_pct": result.ratios_pct["all"], "ratio_ggo_pct": result.ratios_pct["ggo"],
                "ratio_consolidation_pct": result.ratios_pct["consolidation"],
                "lung_total_ml": result.lung_volume_ml["total"], "lung_right_ml": result.lung_volume_ml["right"],
                "lung_left_ml": result.lung_volume_ml["left"], "ggo_ml": result.lesion_volume_ml["ggo"],
                "consolidation_ml": result.lesion_volume_ml["consolidation"],
                "vessels_ml": result.lesion_volume_ml["vessels"], "blob_count": result.blob_count,
            })
        except CoviaxClientError as exc:
            row.update(job_id=exc.job_id or row["job_id"], error=f"{exc.code}: {exc.message}".replace("\n", " "))
        except (OSError, ValueError) as exc:
            row["error"] = f"{exc.__class__.__name__}: {exc}".replace("\n", " ")
        except Exception as exc:  # one bad scan never stops the batch
            row["error"] = f"{exc.__class__.__name__}: {exc}".replace("\n", " ")
        record(row)

    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="coviax-batch") as pool:
        list(pool.map(one, todo))
    return counts
