"""``coviax-client``: segment one scan, run a batch, or listen for DICOM pushes, against a COViaX server.

    coviax-client segment PATH --server HOST:PORT --out DIR [--deidentify]
    coviax-client batch MANIFEST.csv --server HOST:PORT --out DIR --parallel N
    coviax-client dicom-listener --ae-title AE --port P --server HOST:PORT --out DIR
    coviax-client health | info | jobs | job ID | cancel ID | download ID NAME --out DIR

``--server`` defaults to $COVIAX_SERVER, the token to $COVIAX_TOKEN. Exit
codes: 0 done, 1 a batch finished with failed scans, 2 an error (the line
printed says which). Research use only; not a medical device.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

NOTICE = "Research use only. COViaX is not a medical device."


def _client(args, **kwargs):
    from coviax_client.sdk import CoviaxClient

    token = args.token
    if args.token_file:
        token = Path(args.token_file).read_text().strip().splitlines()[0].strip()
    if not args.server:
        raise SystemExit("coviax-client: error: give --server HOST:PORT (or set COVIAX_SERVER)")
    return CoviaxClient(args.server, token=token, tls_ca=args.tls_ca, client_cert=args.cert, client_key=args.key,
                        tls=args.tls or None, timeout=args.timeout, tls_server_name=args.tls_server_name, **kwargs)


def _options(args) -> dict:
    options = {"lungs": args.lungs or "", "outputs": [o for o in (args.outputs or "").split(",") if o]}
    if args.blobs is not None:
        options["max_blobs"] = args.blobs
    return options


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
    with _client(args) as client, _ProgressView() as view:
        result = client.segment(args.path, progress=view, deidentify=args.deidentify, study_label=args.study_label or "",
                                **_options(args))
        paths = client.download_all(result, out)
    print(result.format_table())
    print(f"outputs in {out.resolve()}: " + ", ".join(p.name for p in paths.values()))
    return 0


def cmd_batch(args) -> int:
    from coviax_client.batch import run_batch

    def on_scan(row):
        print(f"{row['id']}: {row['status']}" + (f" ({row['error']})" if row.get("error") else
                                                 f" VRall {float(row['ratio_all_pct']):.2f} %"), flush=True)

    with _client(args, retry_codes=("UNAVAILABLE", "RESOURCE_EXHAUSTED"), retries=8) as client:
        counts = run_batch(client, Path(args.manifest), Path(args.out), parallel=args.parallel,
                           deidentify=args.deidentify, on_scan=on_scan, **_options(args))
    print(f"batch: {counts['done']} done, {counts['failed']} failed, {counts['skipped']} already done; "
          f"results in {Path(args.out).resolve() / 'results.csv'}")
    return 1 if counts["failed"] else 0


def cmd_listener(args) -> int:
    from coviax_client.listener import DicomListener, sdk_submitter

    client = _client(args, retry_codes=("UNAVAILABLE", "RESOURCE_EXHAUSTED"), retries=8)
    listener = DicomListener(args.ae_title, args.port, args.out, sdk_submitter(client, args.deidentify, **_options(args)),
                             idle_seconds=args.idle_seconds, host=args.host, keep_incoming=args.keep_incoming)
    listener.start()
    print(f"coviax-client: C-STORE SCP {args.ae_title} on {args.host}:{listener.port}; series complete after "
          f"{args.idle_seconds:g} s without new instances; Ctrl-C stops", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        listener.stop()
        client.close()
    return 0


def cmd_health(args) -> int:
    with _client(args) as client:
        if args.wait:
            client.wait_ready(args.wait)
        status = client.health()
    print(status)
    return 0 if status == "SERVING" else 2


def cmd_info(args) -> int:
    with _client(args) as client:
        print(client.model_info())
    return 0


def cmd_jobs(args) -> int:
    from coviax_api.coviax.v1 import coviax_pb2 as pb

    with _client(args) as client:
        for job in client.list_jobs(batch_id=args.batch_id or "", state=args.state or ""):
            print(f"{job.job_id}  {pb.JobState.Name(job.state):<9}  {job.client_ref}  {job.error.code}")
    return 0


def cmd_job(args) -> int:
    with _client(args) as client:
        print(client.get_job(args.job_id))
    return 0


def cmd_cancel(args) -> int:
    from coviax_api.coviax.v1 import coviax_pb2 as pb

    with _client(args) as client:
        print(pb.JobState.Name(client.cancel(args.job_id).state))
    return 0


def cmd_download(args) -> int:
    with _client(args) as client:
        print(client.download(args.job_id, args.name, Path(args.out)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", default=os.environ.get("COVIAX_SERVER"), help="HOST:PORT of the service ($COVIAX_SERVER)")
    common.add_argument("--token", default=os.environ.get("COVIAX_TOKEN"), help="bearer token ($COVIAX_TOKEN)")
    common.add_argument("--token-file", help="file whose first line is the bearer token")
    common.add_argument("--tls", action="store_true", help="TLS with the system's CA certificates")
    common.add_argument("--tls-ca", help="CA certificate (PEM) of the server: turns TLS on")
    common.add_argument("--tls-server-name", help="expected name in the server certificate (if not the host)")
    common.add_argument("--cert", help="client certificate (PEM), for mutual TLS")
    common.add_argument("--key", help="client private key (PEM), for mutual TLS")
    common.add_argument("--timeout", type=float, default=900.0, help="deadline per scan or call, seconds (default 900)")
    common.add_argument("-v", "--verbose", action="store_true")

    scan_opts = argparse.ArgumentParser(add_help=False)
    scan_opts.add_argument("--lungs", choices=["auto", "lungmask", "classical"], help="lung method (server default if unset)")
    scan_opts.add_argument("--outputs", help="comma-separated, e.g. report,nifti,seg,png (all the server has: `info`; default all)")
    scan_opts.add_argument("--blobs", type=int, help="largest lesion blobs to list (default 10)")
    scan_opts.add_argument("--deidentify", action="store_true",
                           help="remove patient-identifying tags before sending (list in docs/SERVICE.md; geometry kept)")

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

    p = sub.add_parser("dicom-listener", parents=[common, scan_opts], help="C-STORE SCP: analyse every series pushed to it")
    p.add_argument("--ae-title", default="COVIAX", help="AE title (default COVIAX)")
    p.add_argument("--port", type=int, default=11112, help="DICOM port (default 11112)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default all)")
    p.add_argument("--out", required=True, help="results, one folder per series")
    p.add_argument("--idle-seconds", type=float, default=10.0,
                   help="a series is complete when no instance arrived for this long after the association release")
    p.add_argument("--keep-incoming", action="store_true", help="keep the received files after submission")
    p.set_defaults(func=cmd_listener)

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
    p.add_argument("name", help="report, labels_nifti, dicom_seg or montage")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_download)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if args.command == "dicom-listener":
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
