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
import os
import sys
import time
from pathlib import Path

NOTICE = "Research use only. COViaX is not a medical device."
#: The server's lung methods: ``coviax.lungs.LUNG_METHODS``, copied because the client does not import
#: the core; tests/test_settings.py fails if the two differ.
LUNG_METHODS = ("auto", "lungmask", "unet", "classical")


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


def _dicom_tls(cert, key, ca, server_side: bool):
    """An ssl.SSLContext for DICOM TLS (PS3.15 B.1), or None when no certificate or CA is given."""
    import ssl

    if not (cert or key or ca):
        return None
    if server_side:
        if not (cert and key):
            raise ValueError("DICOM TLS needs both --dicom-tls-cert and --dicom-tls-key")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert, key)
        if ca:  # mutual TLS: peers must show a certificate signed by this CA
            ctx.load_verify_locations(ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
        if cert and key:
            ctx.load_cert_chain(cert, key)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _stow_target(args):
    from coviax_client.sender import StowTarget

    token = None
    if args.stow_token_file:
        token = Path(args.stow_token_file).read_text().strip().splitlines()[0].strip()
    return StowTarget(args.stow_url, token=token, ca_file=args.stow_ca)


def cmd_listener(args) -> int:
    import signal
    import threading

    from coviax_client.listener import DicomListener, RoutingRules, sdk_submitter

    rules = RoutingRules(modalities=tuple(args.modality or ["CT"]), series_description=args.series_description,
                         min_slices=args.min_slices, skip_localizers=not args.include_localizers)
    senders = []
    if args.pacs or args.stow_url:
        from coviax_client.sender import PacsNode, ResultSender

        if args.pacs:
            node = PacsNode.parse(args.pacs, calling_ae_title=args.pacs_calling_ae or args.ae_title)
            senders.append(ResultSender(node, Path(args.out) / "pacs", max_attempts=args.send_attempts,
                                        backoff_s=args.send_backoff,
                                        ssl_context=_dicom_tls(None, None, args.pacs_tls_ca, server_side=False)
                                        if args.pacs_tls_ca else None))
        if args.stow_url:
            senders.append(ResultSender(_stow_target(args), Path(args.out) / "stow", max_attempts=args.send_attempts,
                                        backoff_s=args.send_backoff))
    pseudonymiser = None
    if args.pseudonymise:
        if args.deidentify:
            raise ValueError("choose --deidentify or --pseudonymise, not both")
        from coviax_client.pseudonym import Pseudonymiser

        pseudonymiser = Pseudonymiser(Path(args.pseudonymise).expanduser(), Path(args.out) / "pseudonyms")
    client = _client(args, retry_codes=("UNAVAILABLE", "RESOURCE_EXHAUSTED"), retries=8)
    listener = DicomListener(args.ae_title, args.port, args.out,
                             sdk_submitter(client, args.deidentify, sender=senders, pseudonymiser=pseudonymiser,
                                           **_options(args)),
                             idle_seconds=args.idle_seconds, host=args.host, keep_incoming=args.keep_incoming,
                             rules=rules, allowed_calling=args.allow_calling_ae or (),
                             allowed_called=args.allow_called_ae or [args.ae_title],
                             allowed_peers=args.allow_peer or ("127.0.0.1", "::1"),
                             ssl_context=_dicom_tls(args.dicom_tls_cert, args.dicom_tls_key, args.dicom_tls_ca, True),
                             grace_seconds=args.grace_seconds)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    for sender in senders:
        sender.start()
    listener.start()
    print(f"coviax-client: C-STORE SCP {args.ae_title} on {args.host}:{listener.port}; CT series complete after "
          f"{args.idle_seconds:g} s without new instances"
          + "".join(f"; results go back to {sender.node}" for sender in senders) + "; Ctrl-C or SIGTERM stops",
          file=sys.stderr, flush=True)
    try:
        while not stop.wait(1):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        listener.stop()  # running submissions get --grace-seconds; the rest stays in incoming/ for the next start
        for sender in senders:
            sender.stop()  # what is not sent stays in the outbox
        client.close()
    return 0


def cmd_send(args) -> int:
    """Store DICOM files (our SEG/SR/SC, or any) in a PACS through the outbox: retries, dead-letter, no duplicates."""
    from coviax_client.sender import PacsNode, ResultSender

    if bool(args.pacs) == bool(args.stow_url):
        raise ValueError("give either --pacs AE@HOST:PORT (C-STORE) or --stow-url URL (DICOMweb STOW-RS)")
    node = PacsNode.parse(args.pacs, calling_ae_title=args.calling_ae) if args.pacs else _stow_target(args)
    sender = ResultSender(node, Path(args.spool).expanduser(), max_attempts=args.attempts, backoff_s=args.backoff,
                          ssl_context=_dicom_tls(None, None, args.pacs_tls_ca, server_side=False) if args.pacs_tls_ca else None)
    files = [f for p in args.files for f in (sorted(Path(p).rglob("*.dcm")) if Path(p).is_dir() else [Path(p)])]
    queued = sender.enqueue(files)
    print(f"coviax-client: {queued} of {len(files)} instance(s) queued for {node} "
          f"({len(files) - queued} already sent or queued)", file=sys.stderr)
    while sender.pending():
        counts = sender.send_due()
        if counts["sent"] or counts["failed"] or counts["dead"]:
            print(f"coviax-client: sent {counts['sent']}, failed {counts['failed']}, dead-lettered {counts['dead']}",
                  file=sys.stderr, flush=True)
        if sender.pending():
            time.sleep(max(0.2, min(args.backoff, 5.0)))
    dead = sender.dead_letters()
    if dead:
        print(f"coviax-client: {len(dead)} instance(s) in {sender.dead} could not be stored (the .json next to each "
              "says why)", file=sys.stderr)
    return 1 if dead else 0


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
    scan_opts.add_argument("--lungs", choices=list(LUNG_METHODS), help="lung method (server default if unset)")
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

    p = sub.add_parser("dicom-listener", parents=[common, scan_opts], help="C-STORE SCP: analyse every CT series pushed to it")
    p.add_argument("--ae-title", default="COVIAX", help="AE title (default COVIAX)")
    p.add_argument("--port", type=int, default=11112, help="DICOM port (default 11112)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; give the host's address, or 0.0.0.0, to accept a PACS)")
    p.add_argument("--out", required=True, help="results, one folder per series")
    p.add_argument("--idle-seconds", type=float, default=10.0,
                   help="a series is complete when no instance arrived for this long after the association release")
    p.add_argument("--keep-incoming", action="store_true", help="keep the received files after submission")
    g = p.add_argument_group("who may store (associations from others are rejected)")
    g.add_argument("--allow-peer", action="append", metavar="ADDR[/BITS]",
                   help="peer address or network allowed to connect; repeatable (default loopback only; 0.0.0.0/0 = any)")
    g.add_argument("--allow-calling-ae", action="append", metavar="AE",
                   help="calling AE title allowed; repeatable (default any)")
    g.add_argument("--allow-called-ae", action="append", metavar="AE",
                   help="called AE title accepted; repeatable (default: --ae-title)")
    g.add_argument("--dicom-tls-cert", help="DICOM TLS: this listener's certificate (PEM)")
    g.add_argument("--dicom-tls-key", help="DICOM TLS: its private key (PEM)")
    g.add_argument("--dicom-tls-ca", help="DICOM TLS: CA that signs the peers' certificates (turns on mutual TLS)")
    g = p.add_argument_group("what is analysed (other instances are acknowledged and discarded)")
    g.add_argument("--modality", action="append", metavar="MOD", help="accepted Modality; repeatable (default CT)")
    g.add_argument("--series-description", metavar="REGEX",
                   help="SeriesDescription must contain a match of this regular expression (case-insensitive)")
    g.add_argument("--min-slices", type=int, default=16, help="series with fewer instances are skipped (default 16)")
    g.add_argument("--include-localizers", action="store_true", help="keep images whose ImageType is LOCALIZER")
    g = p.add_argument_group("results back to a PACS (C-STORE of SEG, SR and Secondary Capture)")
    g.add_argument("--pacs", metavar="AE@HOST:PORT", help="the PACS node to store the results in")
    g.add_argument("--pacs-calling-ae", help="our AE title towards the PACS (default --ae-title)")
    g.add_argument("--pacs-tls-ca", help="DICOM TLS to the PACS, trusting this CA (PEM)")
    g.add_argument("--stow-url", metavar="URL",
                   help="and/or a DICOMweb root to STOW-RS the results to, e.g. http://pacs:8042/dicom-web")
    g.add_argument("--stow-token-file", help="file whose first line is a bearer token for the DICOMweb server")
    g.add_argument("--stow-ca", help="CA certificate (PEM) of an https DICOMweb server")
    g.add_argument("--send-attempts", type=int, default=5,
                   help="failed sends per instance before it moves to OUT/pacs/dead-letter (default 5)")
    g.add_argument("--send-backoff", type=float, default=5.0,
                   help="seconds before the first retry; doubles each time, at most 600 (default 5)")
    p.add_argument("--pseudonymise", metavar="SECRET_FILE",
                   help="send consistent pseudonyms and replaced UIDs instead of the patient's (PS3.15 E basic profile "
                        "subset); the secret (created 0600 if absent) keys them, OUT/pseudonyms maps them back for the "
                        "results. Instead of --deidentify")
    p.add_argument("--grace-seconds", type=float, default=30.0,
                   help="on SIGTERM, how long running submissions may finish; the rest resumes on the next start")
    p.set_defaults(func=cmd_listener)

    p = sub.add_parser("dicom-send", help="C-STORE DICOM files (e.g. seg.dcm, measurements_sr.dcm, report_sc.dcm) to a PACS, "
                                          "with retries; never the same SOP Instance UID twice")
    p.add_argument("files", nargs="+", help="DICOM files or folders (searched for *.dcm)")
    p.add_argument("--pacs", metavar="AE@HOST:PORT", help="the PACS node (C-STORE)")
    p.add_argument("--stow-url", metavar="URL", help="or a DICOMweb root for STOW-RS, e.g. http://pacs:8042/dicom-web")
    p.add_argument("--stow-token-file", help="file whose first line is a bearer token for the DICOMweb server")
    p.add_argument("--stow-ca", help="CA certificate (PEM) of an https DICOMweb server")
    p.add_argument("--calling-ae", default="COVIAX", help="our AE title (default COVIAX)")
    p.add_argument("--spool", default="~/.cache/coviax/dicom-send",
                   help="outbox, dead-letter folder and the ledger of sent instances (default ~/.cache/coviax/dicom-send)")
    p.add_argument("--attempts", type=int, default=3, help="tries per instance before dead-letter (default 3)")
    p.add_argument("--backoff", type=float, default=2.0, help="seconds before the first retry, doubling (default 2)")
    p.add_argument("--pacs-tls-ca", help="DICOM TLS to the PACS, trusting this CA (PEM)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_send)

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if args.command in ("dicom-listener", "dicom-send"):
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
