"""``coviax-client``: segment one scan, run a batch, or listen for DICOM pushes, against a COViaX server.

    coviax-client segment PATH --server HOST:PORT --out DIR [--deidentify]
    coviax-client batch MANIFEST.csv --server HOST:PORT --out DIR --parallel N
    coviax-client dicom-listener --ae-title AE --port P --server HOST:PORT --out DIR [--pacs AE@HOST:PORT]
    coviax-client dicom-send FILE|DIR... --pacs AE@HOST:PORT | --stow-url URL
    coviax-client health | info | jobs | job ID | cancel ID | download ID NAME --out DIR

``--server`` defaults to $COVIAX_SERVER, the token to $COVIAX_TOKEN. Exit
codes: 0 done, 1 a batch finished with failed scans, 2 an error (the line
printed says which). Research use only; not a medical device.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from coviax_client.cli_common import connect, parent_parsers, scan_options

NOTICE = "Research use only. COViaX is not a medical device."


class _ProgressView:
    """A rich progress bar on a terminal, one line per stage otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.bar = None
        self.stage = None
        if self.stream.isatty():
            try:
                from rich.console import Console
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
            except ImportError:
                return
            self.bar = Progress(TextColumn("{task.description:<28}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                TimeElapsedColumn(), console=Console(file=self.stream))
            self.upload = self.bar.add_task("upload", total=None)
            self.seg = self.bar.add_task("segment", total=None)

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()

    def __call__(self, info: dict) -> None:
        if self.bar:
            total = info.get("expected_slices") or None
            self.bar.update(self.upload, completed=info.get("slices_received", info.get("slices_sent", 0)), total=total)
            self.bar.update(self.seg, completed=info.get("slices_segmented", 0), total=total,
                            description=f"segment ({info.get('stage', '')})")
            return
        if info.get("stage") != self.stage:
            self.stage = info.get("stage")
            print(f"coviax-client: {self.stage} (received {info.get('slices_received', 0)}, "
                  f"segmented {info.get('slices_segmented', 0)})", file=self.stream, flush=True)


def cmd_segment(args) -> int:
    out = Path(args.out)
    with connect(args) as client, _ProgressView() as view:
        result = client.segment(args.path, progress=view, deidentify=args.deidentify, study_label=args.study_label or "",
                                **scan_options(args))
        paths = client.download_all(result, out)
    print(result.format_table())
    print(f"outputs in {out.resolve()}: " + ", ".join(p.name for p in paths.values()))
    return 0


def cmd_batch(args) -> int:
    from coviax_client.batch import run_batch

    def on_scan(row):
        print(f"{row['id']}: {row['status']}" + (f" ({row['error']})" if row.get("error") else
                                                 f" VRall {float(row['ratio_all_pct']):.2f} %"), flush=True)

    with connect(args, retry_codes=("UNAVAILABLE", "RESOURCE_EXHAUSTED"), retries=8) as client:
        counts = run_batch(client, Path(args.manifest), Path(args.out), parallel=args.parallel,
                           deidentify=args.deidentify, on_scan=on_scan, **scan_options(args))
    print(f"batch: {counts['done']} done, {counts['failed']} failed, {counts['skipped']} already done; "
          f"results in {Path(args.out).resolve() / 'results.csv'}")
    return 1 if counts["failed"] else 0


def cmd_health(args) -> int:
    with connect(args) as client:
        if args.wait:
            client.wait_ready(args.wait)
        status = client.health()
    print(status)
    return 0 if status == "SERVING" else 2


def cmd_info(args) -> int:
    with connect(args) as client:
        print(client.model_info())
    return 0


def cmd_jobs(args) -> int:
    from coviax_api.coviax.v1 import coviax_pb2 as pb

    with connect(args) as client:
        for job in client.list_jobs(batch_id=args.batch_id or "", state=args.state or ""):
            print(f"{job.job_id}  {pb.JobState.Name(job.state):<9}  {job.client_ref}  {job.error.code}")
    return 0


def cmd_job(args) -> int:
    with connect(args) as client:
        print(client.get_job(args.job_id))
    return 0


def cmd_cancel(args) -> int:
    from coviax_api.coviax.v1 import coviax_pb2 as pb

    with connect(args) as client:
        print(pb.JobState.Name(client.cancel(args.job_id).state))
    return 0


def cmd_download(args) -> int:
    with connect(args) as client:
        print(client.download(args.job_id, args.name, Path(args.out)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from coviax_client.dicom_cli import add_listener_parser, add_send_parser

    common, scan_opts = parent_parsers()
    parser = argparse.ArgumentParser(prog="coviax-client", description="Client of the COViaX service. " + NOTICE)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", parents=[common, scan_opts], help="analyse one scan; write its outputs; print the summary")
    p.add_argument("path", help="DICOM folder, zip of DICOM files, or one file")
    p.add_argument("--out", required=True, help="folder for report.json, labels.nii.gz, seg.dcm, montage.png")
    p.add_argument("--study-label", help="free text copied into the report (no patient name or ID)")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("batch", parents=[common, scan_opts], help="many scans from a CSV manifest (id,path[,study_label]); resumable")
    p.add_argument("manifest")
    p.add_argument("--out", required=True, help="folder for results.csv and one folder per scan id")
    p.add_argument("--parallel", type=int, default=2, help="scans in flight at once (default 2)")
    p.set_defaults(func=cmd_batch)

    add_listener_parser(sub, [common, scan_opts])
    add_send_parser(sub)
    _add_job_parsers(sub, common)
    return parser


def _add_job_parsers(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("health", parents=[common], help="print the server's health status")
    p.add_argument("--wait", type=float, help="wait up to this many seconds for SERVING")
    p.set_defaults(func=cmd_health)
    p = sub.add_parser("info", parents=[common], help="engine, model version, weights hash, limits")
    p.set_defaults(func=cmd_info)
    p = sub.add_parser("jobs", parents=[common], help="list jobs")
    p.add_argument("--batch-id")
    p.add_argument("--state", choices=["RECEIVING", "QUEUED", "RUNNING", "DONE", "FAILED", "CANCELLED"])
    p.set_defaults(func=cmd_jobs)
    p = sub.add_parser("job", parents=[common], help="one job, with its result")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_job)
    p = sub.add_parser("cancel", parents=[common], help="cancel a job")
    p.add_argument("job_id")
    p.set_defaults(func=cmd_cancel)
    p = sub.add_parser("download", parents=[common], help="download one artifact of a job")
    p.add_argument("job_id")
    p.add_argument("name", help="an artifact of the job (`job ID` lists them): report, labels_nifti, dicom_seg, montage, "
                                "mesh_glb, mesh_stl_lung, mesh_stl_ggo, mesh_stl_consolidation, render_3d, report_html, "
                                "report_pdf, dicom_sr, dicom_sc")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_download)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    long_running = args.command in ("dicom-listener", "dicom-send")  # their logs are read after the fact
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format=("%(asctime)s " if long_running else "") + "%(name)s: %(message)s")
    if long_running:
        logging.getLogger("coviax_client").setLevel(logging.INFO)
    from coviax_client.batch import ManifestError
    from coviax_client.sdk import CoviaxClientError

    try:
        return int(args.func(args) or 0)
    except CoviaxClientError as exc:
        print(f"coviax-client: error: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    except (OSError, ValueError, ManifestError) as exc:
        print(f"coviax-client: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
