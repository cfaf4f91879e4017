"""coviax cohort: the manifest's checks, the QC flags, a resumable run on a local Ray, the table, the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from coviax.io import Volume
from coviax.lungs import LungMask
from coviax.qc import air_noise_hu, blood_pool_hu, flags_for_error, flags_of, qc_checks
from coviax_cohort.manifest import ManifestError, read_manifest, timepoint_order

from service_support import make_small_series


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------- manifest


def test_manifest_missing_column_is_named(tmp_path):
    m = _write(tmp_path / "m.csv", "scan,subject\nx,S1\n")
    with pytest.raises(ManifestError, match=r"missing column\(s\) timepoint in the header \(line 1\)"):
        read_manifest(m)


def test_manifest_names_every_bad_row_and_column(tmp_path):
    (tmp_path / "a").mkdir()
    m = _write(tmp_path / "m.csv", "scan,subject,timepoint,reader_a\n"
                                   "a,S1,0,1.5\n"
                                   "nowhere,S1,1,2\n"
                                   "a,,0,abc\n"
                                   "a,S1,0,\n")
    with pytest.raises(ManifestError) as err:
        read_manifest(m)
    text = str(err.value)
    assert "line 3: column 'scan':" in text and "nowhere does not exist" in text
    assert "line 4: column 'subject' is empty" in text
    assert "line 4: column 'reader_a': 'abc' is not a number" in text
    assert "line 5: scan id 'S1-0' repeats line 2" in text
    assert "line 5: subject 'S1' at timepoint '0' repeats line 2" in text


def test_manifest_rows_paths_and_timepoints(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    m = _write(tmp_path / "m.csv", "scan,subject,timepoint,site,reader_x\na,S/1,baseline,X,\nb,S/1,followup,X,3\n")
    rows = read_manifest(m)
    assert [r.id for r in rows] == ["S_1-baseline", "S_1-followup"]  # no "/" in a folder name
    assert rows[0].scan == str((tmp_path / "a").resolve()) and rows[1].readers == {"reader_x": 3.0}
    assert rows[0].readers == {"reader_x": None}
    assert timepoint_order(rows) == {"baseline": 0.0, "followup": 1.0}
    assert timepoint_order(read_manifest(_write(tmp_path / "n.csv", "scan,subject,timepoint\na,S,10\nb,S,2\n"))) == {
        "10": 10.0, "2": 2.0}


# ---------------------------------------------------------------------------- QC


def _chest(hu_between: float, spacing=(2.0, 2.0, 2.0), air_noise: float = 10.0, lung_slices=slice(2, 38)):
    """A box 'chest': two air lungs, soft tissue of ``hu_between`` between them, noisy air outside."""
    rng = np.random.default_rng(0)
    hu = np.full((40, 120, 120), -1000.0) + rng.normal(0, air_noise, (40, 120, 120))
    hu[:, 20:100, 15:105] = 30  # body
    hu[:, 30:90, 50:70] = hu_between  # mediastinum
    labels = np.zeros(hu.shape, np.uint8)
    labels[lung_slices, 30:90, 20:48] = 1
    labels[lung_slices, 30:90, 72:100] = 2
    hu[labels > 0] = -850
    volume = Volume(hu=np.clip(hu, -1024, 3071).astype(np.int16), spacing_zyx=spacing)
    return volume, LungMask(labels=labels, method="unet")


def test_qc_flags_on_a_clean_and_a_bad_scan():
    volume, lungs = _chest(40.0, spacing=(2.0, 4.0, 4.0), lung_slices=slice(2, 38))
    checks = {c.name: c for c in qc_checks(volume, lungs)}
    assert checks["contrast"].value == "non-contrast" and checks["contrast"].flag is False
    assert not checks["thick_slices"].flag and not checks["truncated_lungs"].flag
    assert checks["uneven_spacing"].flag is None  # no DICOM positions
    assert checks["noise"].flag is False and 5 < checks["noise"].value < 15
    assert 2000 < checks["lung_volume"].value < 9000 and not checks["lung_volume"].flag

    volume, lungs = _chest(200.0, spacing=(5.0, 1.0, 1.0), air_noise=60.0, lung_slices=slice(0, 40))
    lungs.method = "classical"
    checks = qc_checks(volume, lungs)
    by = {c.name: c for c in checks}
    assert by["contrast"].value == "contrast"
    assert set(flags_of(checks)) == {"thick_slices", "truncated_lungs", "noise", "lung_volume", "lung_fallback"}
    assert by["noise"].value > 30 and by["lung_volume"].value < 2000
    assert "first and last" in by["truncated_lungs"].note


def test_contrast_unknown_between_thresholds_and_without_tissue():
    volume, lungs = _chest(90.0)
    assert {c.name: c for c in qc_checks(volume, lungs)}["contrast"].value == "unknown"
    assert blood_pool_hu(volume.hu, np.zeros_like(lungs.labels), volume.spacing_zyx) == (None, 0.0)
    assert air_noise_hu(np.full((4, 50, 50), 40, np.int16), (1.0, 1.0, 1.0)) is None  # no air at all


def test_qc_on_a_real_dicom_series(tmp_path):
    from coviax.io import read_scan
    from coviax.lungs import segment_lungs

    volume = read_scan(make_small_series(tmp_path / "s", n=12))
    checks = {c.name: c for c in qc_checks(volume, segment_lungs(volume, "classical"))}
    assert checks["thick_slices"].flag and checks["thick_slices"].note.startswith("SliceThickness")
    assert checks["uneven_spacing"].flag is False and checks["uneven_spacing"].value == 1.0
    assert checks["truncated_lungs"].flag  # 12 slices from the middle of the chest
    assert checks["lung_fallback"].flag
    assert flags_for_error("GeometryError: missing slice: a gap of 10.00 mm") == ["missing_slices"]


# ---------------------------------------------------------------------------- a run on Ray


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Four small real series (two subjects, two timepoints) and one with a missing slice."""
    base = tmp_path_factory.mktemp("cohort")
    lines = ["scan,subject,timepoint,site,reader_a"]
    for i, (subject, t) in enumerate([("S1", 0), ("S1", 1), ("S2", 0), ("S2", 1)]):
        make_small_series(base / f"scan{i}", n=12, z0=24 + 3 * i)
        lines.append(f"scan{i},{subject},{t},{'A' if i < 2 else 'B'},{0.2 * i}")
    broken = make_small_series(base / "broken", n=12, z0=30)
    sorted(broken.glob("*.dcm"))[6].unlink()  # a slice missing in the middle: the reader refuses the series
    lines.append("broken,S3,0,B,1.0")
    (base / "manifest.csv").write_text("\n".join(lines) + "\n")
    return base


def _run(cohort: Path, out: Path, *extra: str) -> int:
    from coviax.cli import main

    return main(["cohort", "run", str(cohort / "manifest.csv"), "--out", str(out), "--engine", "kmeans",
                 "--outputs", "report,png", *extra])


def test_run_resume_retry_limit_table_and_report(cohort, tmp_path, capsys):
    from coviax_cohort.table import read_table

    out = tmp_path / "run"
    assert _run(cohort, out, "--workers", "2", "--max-attempts", "2") == 1  # one scan failed
    rows = {r["id"]: r for r in read_table(out)}
    assert [rows[f"S{s}-{t}"]["status"] for s in (1, 2) for t in (0, 1)] == ["done"] * 4
    bad = rows["S3-0"]
    assert bad["status"] == "failed" and bad["attempts"] == 1 and "GeometryError: missing slice" in bad["error"]
    assert bad["qc_flags"] == "missing_slices"
    for s in ("S1", "S2"):  # the change between timepoints
        assert rows[f"{s}-1"]["baseline_timepoint"] == "0"
        assert rows[f"{s}-1"]["d_vr_all_pp"] == pytest.approx(rows[f"{s}-1"]["vr_all_pct"] - rows[f"{s}-0"]["vr_all_pct"],
                                                              abs=1e-3)
        assert rows[f"{s}-1"]["d_ggo_ml"] == pytest.approx(rows[f"{s}-1"]["ggo_ml"] - rows[f"{s}-0"]["ggo_ml"], abs=1e-2)
        assert rows[f"{s}-0"]["d_vr_all_pp"] is None
    done = rows["S1-0"]
    assert "thick_slices" in done["qc_flags"] and done["qc_contrast"] in ("non-contrast", "unknown", "contrast")
    assert 0 < done["lung_ml"] and done["lung_method"] and done["reader_a"] == 0.0
    scan_dir = out / "scans" / "S1-0"
    assert (scan_dir / "DONE").is_file() and (scan_dir / "outputs" / "report.json").is_file()
    assert not (scan_dir / "work").exists() and (scan_dir / "outputs" / "node.txt").is_file()
    first_done = (scan_dir / "DONE").read_text()
    summary = json.loads((out / "cohort_run.json").read_text())
    assert summary["ran"] == 5 and summary["scans_per_s"] > 0

    import pyarrow.parquet as pq

    table = pq.read_table(out / "cohort.parquet").to_pylist()
    assert [r["id"] for r in table] == list(rows) and table[0]["vr_all_pct"] == rows["S1-0"]["vr_all_pct"]

    # a rerun: the done scans are skipped (but one whose marker is gone), the failed one is retried
    (out / "scans" / "S2-1" / "DONE").unlink()
    capsys.readouterr()
    assert _run(cohort, out, "--workers", "1", "--max-attempts", "2") == 1
    assert "3 done before, 0 out of attempts, 2 to run" in capsys.readouterr().out
    rows = {r["id"]: r for r in read_table(out)}
    assert rows["S2-1"]["status"] == "done" and rows["S2-1"]["attempts"] == 2
    assert rows["S3-0"]["attempts"] == 2 and (out / "scans" / "S1-0" / "DONE").read_text() == first_done
    state = json.loads((out / "scans" / "S3-0" / "state.json").read_text())
    assert [h["attempt"] for h in state["history"]] == [1, 2] and "missing slice" in state["last_error"]

    # a third run: the failed scan is out of attempts and runs no more; raising the limit retries it
    assert _run(cohort, out, "--max-attempts", "2") == 1
    assert "4 done before, 1 out of attempts, 0 to run" in capsys.readouterr().out
    assert {r["id"]: r for r in read_table(out)}["S3-0"]["attempts"] == 2

    # nothing of the source headers' patient identity in the table, the rows, the states or the log
    source = pydicom.dcmread(next((cohort / "scan0").glob("*.dcm")), stop_before_pixels=True)
    identity = {str(source.get(k, "")) for k in ("PatientName", "PatientID")} - {""}
    written_text = (out / "cohort.csv").read_text() + "".join(
        p.read_text() for p in (out / "scans").glob("*/*.json")) + capsys.readouterr().err
    assert identity and not [v for v in identity if v in written_text]

    from coviax_cohort.report import write_report

    written = write_report(out)
    page = written["html"].read_text()
    assert page.index("S3-0") < page.index("S1-0")  # failed and flagged scans first
    assert "Agreement with readers" in page and "reader_a" in page and "data:image/png;base64," in page
    assert written["pdf"].read_bytes()[:5] == b"%PDF-"


def test_a_changed_scan_path_runs_again(tmp_path):
    from coviax_cohort.manifest import ScanRow
    from coviax_cohort.runner import RunSettings, plan
    from coviax_cohort.state import ScanState

    row = ScanRow(line=2, id="S-0", scan="/data/a", subject="S", timepoint="0")
    state = ScanState(tmp_path, row.id)
    state.start_attempt()
    state.record_success({"id": "S-0"}, "/data/a")
    settings = RunSettings(out_dir=tmp_path, max_attempts=1)
    assert plan([row], settings)[1].skipped == 1
    row.scan = "/data/b"
    todo, stats = plan([row], settings)
    assert stats.given_up == 1 and not todo  # not done for this path, and out of attempts
    assert plan([row], RunSettings(out_dir=tmp_path, max_attempts=2))[0] == [row]


def test_demo_cohort_and_its_scoring(tmp_path, capsys):
    import csv

    from coviax_cohort.demo import make_demo, score
    from coviax_cohort.table import COLUMNS, add_deltas, write_table

    manifest = make_demo(tmp_path / "data", scans=2)
    rows = read_manifest(manifest)
    assert [(r.subject, r.timepoint, r.site) for r in rows] == [("D001", "0", "A"), ("D001", "1", "A")]
    assert set(rows[0].readers) == {"reader_sim"}
    with open(tmp_path / "data" / "truth.csv", newline="") as f:
        truth = list(csv.DictReader(f))
    assert [t["severity"] for t in truth] == ["mild", "moderate"] and truth[0]["source"] == "bundled-ct"
    assert float(truth[1]["ggo_ml"]) > float(truth[0]["ggo_ml"]) > 0
    make_demo(tmp_path / "data", scans=2)
    assert "already holds this cohort" in capsys.readouterr().out

    # a run that measured exactly the truth scores 0 % error
    table = []
    for r, t in zip(rows, truth):
        record = {c: None for c in COLUMNS}
        record.update(id=r.id, subject=r.subject, timepoint=r.timepoint, status="done",
                      **{k: float(t[k]) for k in ("vr_all_pct", "ggo_ml", "consolidation_ml")})
        table.append(record)
    add_deltas(table, timepoint_order(rows))
    (tmp_path / "run").mkdir()
    write_table(table, tmp_path / "run")
    [pair] = score(tmp_path / "data", tmp_path / "run")["pairs"]
    assert pair["severities"] == "mild->moderate"
    assert {pair[k]["error_pct"] for k in ("d_vr_all_pp", "d_ggo_ml", "d_consolidation_ml")} == {0.0}


def test_an_unexpected_error_keeps_its_message_out(monkeypatch, tmp_path):
    import coviax.pipeline
    from coviax_cohort.task import analyse_scan

    def boom(*_a, **_k):
        raise ValueError("bad value in PatientName DOE^JANE")

    monkeypatch.setattr(coviax.pipeline, "run", boom)
    row = analyse_scan({"id": "x", "scan": str(tmp_path), "scan_dir": str(tmp_path / "x"),
                        "options": {"engine": "kmeans"}})
    assert row["status"] == "failed" and row["error"].startswith("ValueError at test_cohort.py:")
    assert "DOE" not in row["error"]


def test_cli_errors_name_the_problem(tmp_path, monkeypatch, capsys):
    import sys

    from coviax.cli import main

    bad = _write(tmp_path / "bad.csv", "scan,timepoint\nx,0\n")
    assert main(["cohort", "run", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "missing column(s) subject" in capsys.readouterr().err
    (tmp_path / "scan").mkdir()
    good = _write(tmp_path / "good.csv", "scan,subject,timepoint\nscan,S,0\n")
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    assert main(["cohort", "run", str(good), "--out", str(tmp_path / "o")]) == 2
    assert "needs Ray: pip install 'coviax[cohort]'" in capsys.readouterr().err
