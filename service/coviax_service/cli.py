"""``coviax serve``: registered by :func:`coviax.cli._add_optional` from :func:`add_serve_parser`.

The flags are made from :data:`coviax_service.settings.SETTINGS`, each with its environment
variable (docs/SERVICE.md "Configuration"); a flag given on the command line wins over its variable.
"""

from __future__ import annotations

import argparse

from coviax_service.settings import SETTINGS, add_flags


def add_serve_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="run the gRPC service (Segment, SubmitBatch, jobs, artifacts; health, reflection, metrics)",
        description="Run the COViaX gRPC service. Research use only; not a medical device. "
        "Every flag defaults to its COVIAX_* environment variable (docs/SERVICE.md).",
    )
    add_flags(p)
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from coviax_service.settings import from_env_and_flags
        from coviax_service.server import serve
    except ImportError as exc:
        from coviax.errors import CoviaxError

        raise CoviaxError(f"coviax serve needs the service extra ({exc.name} is missing): "
                          "pip install 'coviax[service]'") from None

    config = from_env_and_flags({s.name: getattr(args, s.name) for s in SETTINGS})
    return serve(config)
