"""What the ``coviax-client`` commands share: the connection and scan options (parent parsers) and
the client made from them."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

#: The server's lung methods: ``coviax.lungs.LUNG_METHODS``, copied because the client does not import
#: the core; tests/test_settings.py fails if the two differ.
LUNG_METHODS = ("auto", "lungmask", "hybrid", "unet", "classical")


def connect(args, **kwargs):
    from coviax_client.sdk import CoviaxClient

    token = args.token
    if args.token_file:
        token = Path(args.token_file).read_text().strip().splitlines()[0].strip()
    if not args.server:
        raise SystemExit("coviax-client: error: give --server HOST:PORT (or set COVIAX_SERVER)")
    return CoviaxClient(args.server, token=token, tls_ca=args.tls_ca, client_cert=args.cert, client_key=args.key,
                        tls=args.tls or None, timeout=args.timeout, tls_server_name=args.tls_server_name, **kwargs)


def scan_options(args) -> dict:
    options = {"lungs": args.lungs or "", "outputs": [o for o in (args.outputs or "").split(",") if o]}
    if args.blobs is not None:
        options["max_blobs"] = args.blobs
    return options


def parent_parsers() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """(the connection options of every command, the options of a scan)."""
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
    return common, scan_opts
