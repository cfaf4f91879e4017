"""The cohort manifest: a CSV file, one row a scan.

Columns (header names, case-sensitive):

==============  ==========  ===================================================================
``scan``        required    DICOM folder, zip, or NIfTI/MHA/NRRD file; relative paths are taken
                            from the manifest's folder
``subject``     required    the (pseudonymous) subject; links the timepoints of one patient
``timepoint``   required    e.g. 0/1/2 or baseline/followup; numeric when every row's is a
                            number, else ordered by first appearance in the manifest
``site``        optional    the centre (the report groups by it)
``id``          optional    the scan's folder name in the output (default ``subject-timepoint``)
``reader_*``    optional    a reader's VRall (%) for the scan, e.g. ``reader_a``; ``coviax cohort
                            report`` gives the agreement statistics against them
==============  ==========  ===================================================================

Every problem found is reported at once, each naming its line (the header is line 1) and column,
before anything runs. The manifest's own values (subject, site) go into the table as they are:
a trial's manifest holds pseudonyms; nothing is read from the DICOM headers' patient fields.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from coviax.errors import CoviaxError

REQUIRED = ("scan", "subject", "timepoint")
READER_PREFIX = "reader_"
_ID_OK = re.compile(r"[^A-Za-z0-9._-]+")
MAX_PROBLEMS_SHOWN = 20


class ManifestError(CoviaxError):
    """The manifest cannot be used as it is (the message names every line and column at fault)."""


@dataclass
class ScanRow:
    line: int  # line in the CSV file (header = 1)
    id: str
    scan: str  # absolute path
    subject: str
    timepoint: str
    site: str = ""
    readers: dict[str, float | None] = field(default_factory=dict)


def read_manifest(path: str | Path, check_files: bool = True) -> list[ScanRow]:
    """The rows of the manifest at ``path``; :class:`ManifestError` lists every problem found."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise ManifestError(f"{path}: missing column(s) {', '.join(missing)} in the header (line 1); "
                                f"found {', '.join(header) or 'no header'}; required: {', '.join(REQUIRED)}")
        raw = [(i, {(k or "").strip(): (v or "").strip() for k, v in r.items() if k is not None})
               for i, r in enumerate(reader, start=2)]
    if not raw:
        raise ManifestError(f"{path}: no scan rows after the header")
    problems: list[str] = []
    rows = [_row(line, values, path.parent, header, problems, check_files) for line, values in raw]
    _check_unique(rows, problems)
    if problems:
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise ManifestError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(shown) + more)
    return rows


def _row(line: int, values: dict, base: Path, header: list[str], problems: list[str], check_files: bool) -> ScanRow:
    for column in REQUIRED:
        if not values.get(column):
            problems.append(f"line {line}: column {column!r} is empty")
    scan = values.get("scan", "")
    scan_path = Path(scan) if Path(scan).is_absolute() else base / scan
    if scan and check_files and not scan_path.exists():
        problems.append(f"line {line}: column 'scan': {scan_path} does not exist")
    readers: dict[str, float | None] = {}
    for column in header:
        if column.startswith(READER_PREFIX):
            text = values.get(column, "")
            try:
                readers[column] = float(text) if text not in ("", "NA", "na", "nan") else None
            except ValueError:
                problems.append(f"line {line}: column {column!r}: {text!r} is not a number (a reader's VRall in %)")
    subject, timepoint = values.get("subject", ""), values.get("timepoint", "")
    scan_id = _ID_OK.sub("_", values.get("id") or f"{subject}-{timepoint}").strip("._") or f"line{line}"
    return ScanRow(line=line, id=scan_id, scan=str(scan_path.resolve()) if scan else "", subject=subject,
                   timepoint=timepoint, site=values.get("site", ""), readers=readers)


def _check_unique(rows: list[ScanRow], problems: list[str]) -> None:
    seen_id: dict[str, int] = {}
    seen_pair: dict[tuple[str, str], int] = {}
    for r in rows:
        if r.id in seen_id:
            problems.append(f"line {r.line}: scan id {r.id!r} repeats line {seen_id[r.id]} (give an 'id' column)")
        seen_id.setdefault(r.id, r.line)
        pair = (r.subject, r.timepoint)
        if r.subject and r.timepoint and pair in seen_pair:
            problems.append(f"line {r.line}: subject {r.subject!r} at timepoint {r.timepoint!r} repeats line "
                            f"{seen_pair[pair]}")
        seen_pair.setdefault(pair, r.line)


def timepoint_order(rows: list[ScanRow]) -> dict[str, float]:
    """Each timepoint's rank: its number when every timepoint is a number, else its first appearance."""
    values = list(dict.fromkeys(r.timepoint for r in rows))
    try:
        return {v: float(v) for v in values}
    except ValueError:
        return {v: float(i) for i, v in enumerate(values)}
