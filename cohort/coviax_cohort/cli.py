"""``coviax cohort run MANIFEST --out DIR`` and ``coviax cohort report DIR`` (entry point ``cohort``)."""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path
from typing import Any

from coviax.errors import OptionError
from coviax.lesions import ENGINES
from coviax.lungs import LUNG_METHODS

DEFAULT_OUTPUTS = ("report", "nifti", "png")


def add_cohort_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("cohort", help="a trial's cohort on Ray: run a manifest, report on it",
                              description="Cohorts of scans: run every scan of a CSV manifest on Ray (resumable), "
                                          "then report on the output folder.")
    sub = p.add_subparsers(dest="cohort_command", metavar="{run,report}")
    sub.required = True
    r = sub.add_parser("run", help="analyse every scan of a manifest as Ray tasks (resumable)")
    r.add_argument("manifest", help="CSV with columns scan, subject, timepoint [, site, id, reader_*]")
    r.add_argument("--out", required=True, help="output folder (created; a rerun resumes it)")
    r.add_argument("--address", help="Ray cluster to join (auto, ray://host:10001, host:6379); default: start "
                                     "Ray here")
    r.add_argument("--workers", type=int, default=1, help="scans at once (and CPUs of a local Ray); default 1")
    r.add_argument("--max-attempts", type=int, default=3,
                   help="attempts per scan over all runs before it stays failed; default 3")
    r.add_argument("--lungs", default=LUNG_METHODS[0], choices=list(LUNG_METHODS))
    r.add_argument("--engine", default=ENGINES[0], choices=list(ENGINES))
    r.add_argument("--outputs", default=",".join(DEFAULT_OUTPUTS),
                   help=f"pipeline outputs per scan, comma-separated; default {','.join(DEFAULT_OUTPUTS)}")
    r.set_defaults(func=_cmd_run)
    rep = sub.add_parser("report", help="cohort.html (and cohort.pdf) from a run's output folder")
    rep.add_argument("dir", help="the --out folder of coviax cohort run")
    rep.add_argument("--no-pdf", action="store_true", help="write the HTML page only")
    rep.set_defaults(func=_cmd_report)


def _cmd_run(args: argparse.Namespace) -> int:
    from coviax_cohort.manifest import read_manifest
    from coviax_cohort.runner import ProgressLine, RunSettings, plan, run_scans, start_ray
    from coviax_cohort.table import collect, write_summary, write_table

    if args.workers < 1 or args.max_attempts < 1:
        raise OptionError("--workers and --max-attempts must be at least 1")
    outputs = tuple(o.strip() for o in args.outputs.split(",") if o.strip())
    rows = read_manifest(args.manifest)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = RunSettings(out_dir=out, address=args.address, workers=args.workers, max_attempts=args.max_attempts,
                           options={"lungs": args.lungs, "engine": args.engine, "outputs": list(outputs)})
    from coviax.pipeline import SegmentOptions

    SegmentOptions(lungs=args.lungs, engine=args.engine, outputs=outputs).validate()
    todo, stats = plan(rows, settings)
    print(f"cohort: {stats.total} scans: {stats.skipped} done before, {stats.given_up} out of attempts, "
          f"{len(todo)} to run with {args.workers} worker(s)")
    started_here = False
    if todo:
        started_here = start_ray(args.address, args.workers)
        try:
            with ProgressLine(len(todo)) as progress:
                run_scans(todo, settings, stats, progress)
        finally:
            if started_here:
                import ray

                ray.shutdown()
    table = collect(rows, out)
    written = write_table(table, out)
    summary = {"manifest": str(Path(args.manifest).resolve()), "workers": args.workers,
               "address": args.address or "local", "scans": stats.total, "skipped_done": stats.skipped,
               "given_up": stats.given_up, "ran": stats.ran, "done_now": stats.done, "failed_now": stats.failed,
               "seconds": round(stats.seconds, 2), "scans_per_s": round(stats.scans_per_s, 4),
               "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
               "status": {s: sum(1 for r in table if r["status"] == s) for s in ("done", "failed", "not run")},
               "tables": {k: p.name for k, p in written.items()}}
    write_summary(out, summary)
    print(f"cohort: ran {stats.ran} scan(s) in {stats.seconds:.1f} s ({stats.scans_per_s:.3f} scans/s); "
          f"table: {summary['status']['done']} done, {summary['status']['failed']} failed, "
          f"{summary['status']['not run']} not run -> " + ", ".join(str(p) for p in written.values()))
    if "parquet" not in written:
        print("cohort: pyarrow is not installed: no cohort.parquet (pip install 'coviax[cohort]')")
    return 0 if summary["status"]["done"] == stats.total else 1


def _cmd_report(args: argparse.Namespace) -> int:
    from coviax_cohort.report import write_report

    written = write_report(Path(args.dir), pdf=not args.no_pdf)
    print("cohort report: " + ", ".join(str(p) for p in written.values()))
    return 0
