"""``coviax serve``: registered by :func:`coviax.cli._add_optional` from :func:`add_serve_parser`.

Every flag has an environment variable (docs/SERVICE.md "Configuration");
a flag given on the command line wins over its variable.
"""

from __future__ import annotations

import argparse

from coviax.lungs import LUNG_METHODS


def add_serve_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="run the gRPC service (Segment, SubmitBatch, jobs, artifacts; health, reflection, metrics)",
        description="Run the COViaX gRPC service. Research use only; not a medical device. "
        "Every flag defaults to its COVIAX_* environment variable (docs/SERVICE.md).",
    )
    p.add_argument("--host", help="address to bind (COVIAX_HOST, default [::], all interfaces)")
    p.add_argument("--port", type=int, help="gRPC port (COVIAX_PORT, default 50051)")
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics port, 0 = off (COVIAX_METRICS_PORT, default 9090)")
    p.add_argument("--data-dir", help="jobs database and artifacts (COVIAX_DATA_DIR, default ./coviax-data)")
    p.add_argument("--engine", choices=["kmeans", "unet"], help="lesion engine (COVIAX_ENGINE, default unet: the shipped U-Net B; kmeans needs no weights)")
    p.add_argument("--device", help="cpu or cuda (COVIAX_DEVICE, default cpu)")
    p.add_argument("--weights", help="U-Net checkpoint (COVIAX_WEIGHTS, default the shipped U-Net B)")
    p.add_argument("--lungs", choices=list(LUNG_METHODS), help="default lung method (COVIAX_LUNGS, default auto)")
    p.add_argument("--tokens-file", help="bearer tokens, one per line (COVIAX_TOKENS_FILE); none = no auth")
    p.add_argument("--tls-cert", help="server certificate, PEM (COVIAX_TLS_CERT)")
    p.add_argument("--tls-key", help="server private key, PEM (COVIAX_TLS_KEY)")
    p.add_argument("--tls-client-ca", help="CA of client certificates: turns on mutual TLS (COVIAX_TLS_CLIENT_CA)")
    p.add_argument("--max-concurrent-scans", type=int, help="scans analysed at once (COVIAX_MAX_CONCURRENT_SCANS, default 4)")
    p.add_argument("--workers", type=int, help="3D post-processing processes (COVIAX_WORKERS, default 2)")
    p.add_argument("--max-queued-slices", type=int, help="slices waiting for the engine (COVIAX_MAX_QUEUED_SLICES, default 2048)")
    p.add_argument("--max-scan-bytes", type=int, help="bytes per uploaded scan (COVIAX_MAX_SCAN_BYTES, default 2 GiB)")
    p.add_argument("--max-slices", type=int, help="instances per scan (COVIAX_MAX_SLICES, default 2000)")
    p.add_argument("--batch-slices", type=int, help="slices per engine batch (COVIAX_BATCH_SLICES, default 16)")
    p.add_argument("--retention-days", type=float, help="remove artifacts older than this, 0 = never (COVIAX_RETENTION_DAYS, default 7)")
    p.add_argument("--retention-max-bytes", type=int, help="keep at most this many artifact bytes, 0 = no limit (COVIAX_RETENTION_MAX_BYTES)")
    p.add_argument("--drain-seconds", type=float, help="on SIGTERM, wait this long for scans in flight (COVIAX_DRAIN_SECONDS, default 30)")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from coviax_service.config import from_env_and_flags
        from coviax_service.server import serve
    except ImportError as exc:
        from coviax.errors import CoviaxError

        raise CoviaxError(f"coviax serve needs the service extra ({exc.name} is missing): "
                          "pip install 'coviax[service]'") from None

    names = ("host", "port", "metrics_port", "data_dir", "engine", "device", "weights", "lungs", "tokens_file",
             "tls_cert", "tls_key", "tls_client_ca", "max_concurrent_scans", "workers", "max_queued_slices",
             "max_scan_bytes", "max_slices", "batch_slices", "retention_days", "retention_max_bytes", "drain_seconds")
    config = from_env_and_flags({n: getattr(args, n) for n in names})
    return serve(config)
