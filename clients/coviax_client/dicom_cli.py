"""The DICOM commands of ``coviax-client``: ``dicom-listener`` (a C-STORE SCP that analyses every CT
series pushed to it and can send the results back) and ``dicom-send`` (results to a PACS by C-STORE or
STOW-RS, through the outbox), with DICOM TLS."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from coviax_client.cli_common import connect, scan_options


def dicom_tls(cert, key, ca, server_side: bool):
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
    from coviax_client.transport import StowTarget

    token = None
    if args.stow_token_file:
        token = Path(args.stow_token_file).read_text().strip().splitlines()[0].strip()
    return StowTarget(args.stow_url, token=token, ca_file=args.stow_ca)


def _result_senders(args) -> list:
    """The listener's senders of results: C-STORE to --pacs and/or STOW-RS to --stow-url."""
    senders = []
    if args.pacs or args.stow_url:
        from coviax_client.sender import ResultSender
        from coviax_client.transport import PacsNode

        if args.pacs:
            node = PacsNode.parse(args.pacs, calling_ae_title=args.pacs_calling_ae or args.ae_title)
            senders.append(ResultSender(node, Path(args.out) / "pacs", max_attempts=args.send_attempts,
                                        backoff_s=args.send_backoff,
                                        ssl_context=dicom_tls(None, None, args.pacs_tls_ca, server_side=False)
                                        if args.pacs_tls_ca else None))
        if args.stow_url:
            senders.append(ResultSender(_stow_target(args), Path(args.out) / "stow", max_attempts=args.send_attempts,
                                        backoff_s=args.send_backoff))
    return senders


def cmd_listener(args) -> int:
    import signal
    import threading

    from coviax_client.listener import DicomListener
    from coviax_client.routing import RoutingRules
    from coviax_client.submit import sdk_submitter

    rules = RoutingRules(modalities=tuple(args.modality or ["CT"]), series_description=args.series_description,
                         min_slices=args.min_slices, skip_localizers=not args.include_localizers)
    senders = _result_senders(args)
    pseudonymiser = None
    if args.pseudonymise:
        if args.deidentify:
            raise ValueError("choose --deidentify or --pseudonymise, not both")
        from coviax_client.pseudonym import Pseudonymiser

        pseudonymiser = Pseudonymiser(Path(args.pseudonymise).expanduser(), Path(args.out) / "pseudonyms")
    client = connect(args, retry_codes=("UNAVAILABLE", "RESOURCE_EXHAUSTED"), retries=8)
    listener = DicomListener(args.ae_title, args.port, args.out,
                             sdk_submitter(client, args.deidentify, sender=senders, pseudonymiser=pseudonymiser,
                                           **scan_options(args)),
                             idle_seconds=args.idle_seconds, host=args.host, keep_incoming=args.keep_incoming,
                             rules=rules, allowed_calling=args.allow_calling_ae or (),
                             allowed_called=args.allow_called_ae or [args.ae_title],
                             allowed_peers=args.allow_peer or ("127.0.0.1", "::1"),
                             ssl_context=dicom_tls(args.dicom_tls_cert, args.dicom_tls_key, args.dicom_tls_ca, True),
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
    from coviax_client.sender import ResultSender
    from coviax_client.transport import PacsNode

    if bool(args.pacs) == bool(args.stow_url):
        raise ValueError("give either --pacs AE@HOST:PORT (C-STORE) or --stow-url URL (DICOMweb STOW-RS)")
    node = PacsNode.parse(args.pacs, calling_ae_title=args.calling_ae) if args.pacs else _stow_target(args)
    sender = ResultSender(node, Path(args.spool).expanduser(), max_attempts=args.attempts, backoff_s=args.backoff,
                          ssl_context=dicom_tls(None, None, args.pacs_tls_ca, server_side=False) if args.pacs_tls_ca else None)
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


def add_listener_parser(sub, parents) -> None:
    p = sub.add_parser("dicom-listener", parents=parents, help="C-STORE SCP: analyse every CT series pushed to it")
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


def add_send_parser(sub) -> None:
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
