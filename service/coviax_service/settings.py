"""The one table of the service's settings: each row makes a ``coviax serve`` flag, a ``COVIAX_*``
environment variable and a row of docs/SERVICE.md "Configuration".

The defaults are those of :class:`coviax_service.config.ServiceConfig`; the flag help and the docs
quote them from there, so they cannot say another default. ``python -m coviax_service.settings``
prints the docs table (tests/test_settings.py checks that docs/SERVICE.md holds it as printed);
:func:`from_env_and_flags` reads flags and environment into a :class:`ServiceConfig`.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path

from coviax.errors import OptionError
from coviax.lesions import SERVED_ENGINES
from coviax.lungs import LUNG_METHODS
from coviax_service.config import ServiceConfig


@dataclass(frozen=True)
class Setting:
    """One setting: ``name`` is the :class:`ServiceConfig` attribute."""

    name: str
    kind: type
    help: str  # for the flag's help and the docs' "meaning" column
    choices: tuple[str, ...] | None = None
    default_text: str | None = None  # how the default reads where its repr is not clear ("2 GiB")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "COVIAX_" + self.name.upper()

    def default(self):
        return {f.name: f.default for f in fields(ServiceConfig)}[self.name]

    def describe_default(self) -> str:
        """The default as the help and the docs say it ("none" for an unset one)."""
        if self.default_text is not None:
            return self.default_text
        value = self.default()
        if value is None:
            return "none"
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value)

    def parse(self, raw: str):
        """The value of an environment variable's text; ValueError if it is not a ``kind``."""
        return self.kind(raw)


SETTINGS: tuple[Setting, ...] = (
    Setting("host", str, "address to bind", default_text="[::] (all interfaces)"),
    Setting("port", int, "gRPC port"),
    Setting("metrics_port", int, "Prometheus /metrics port, on the --host address; 0 = off"),
    Setting("data_dir", Path, "jobs database, uploads and artifacts", default_text="./coviax-data"),
    Setting("engine", str, "lesion engine: unet = the shipped U-Net B, kmeans needs no weights",
            choices=SERVED_ENGINES),
    Setting("device", str, "cpu or cuda (start fails with a clear message if CUDA is absent)"),
    Setting("weights", str, "U-Net checkpoint", default_text="the shipped U-Net B"),
    Setting("lungs", str, "default lung method", choices=LUNG_METHODS),
    Setting("tokens_file", str, "bearer tokens, one per line: TOKEN [TENANT] or sha256:HEX [TENANT] (# comments); "
            "none and no COVIAX_TOKENS = auth off"),
    Setting("tls_cert", str, "server certificate, PEM (with --tls-key: TLS on)"),
    Setting("tls_key", str, "server private key, PEM"),
    Setting("tls_client_ca", str, "CA of client certificates: turns on mutual TLS (certificates required)"),
    Setting("max_concurrent_scans", int, "slots: scans uploading to Segment or being analysed"),
    Setting("workers", int, "processes for the 3D post-processing"),
    Setting("worker_memory_gb", float, "address space of each of those processes, GiB; a scan that needs more "
            "ends RESOURCE_EXHAUSTED; 0 = no cap. A 512-slice scan peaked at 3.8 GiB (K-means) and 3.0 GiB "
            "(U-Net), so the default holds about 2000 slices"),
    Setting("max_queued_slices", int, "slices waiting for the engine"),
    Setting("max_scan_bytes", int, "bytes per uploaded scan", default_text="2 GiB"),
    Setting("max_slices", int, "instances per scan"),
    Setting("batch_slices", int, "slices per engine batch"),
    Setting("retention_days", float, "remove artifacts older than this; 0 = keep them"),
    Setting("retention_max_bytes", int, "keep at most this many artifact bytes; 0 = no limit"),
    Setting("drain_seconds", float, "on SIGTERM, wait this long for scans in flight"),
)

#: Read from the environment only (no flag): more tokens, added to those of the tokens file.
TOKENS_ENV = "COVIAX_TOKENS"


def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; each defaults to None so that its environment variable can fill it."""
    for s in SETTINGS:
        parser.add_argument(s.flag, dest=s.name, type=None if s.kind in (str, Path) else s.kind,
                            choices=list(s.choices) if s.choices else None,
                            help=f"{s.help} ({s.env}, default {s.describe_default()})")


def markdown_table() -> str:
    """The table of docs/SERVICE.md "Configuration"."""
    rows = ["| flag | environment | default | meaning |", "| --- | --- | --- | --- |"]
    for s in SETTINGS:
        meaning = s.help + (f" (one of {', '.join(s.choices)})" if s.choices else "")
        rows.append(f"| `{s.flag}` | `{s.env}` | {s.describe_default()} | {meaning} |")
    rows.append(f"| | `{TOKENS_ENV}` | none | more tokens (tenant \"\"), comma or space separated |")
    return "\n".join(rows)


def from_env_and_flags(flags: dict | None = None, environ: dict | None = None) -> ServiceConfig:
    """Build a config: a flag that is not None wins over its environment variable, which wins over the default.

    ``COVIAX_TOKENS`` (comma- or space-separated) adds tokens to those of the file.
    """
    environ = os.environ if environ is None else environ
    flags = flags or {}
    config = ServiceConfig()
    for setting in SETTINGS:
        value = flags.get(setting.name)
        if value is None and environ.get(setting.env, "") != "":
            raw = environ[setting.env]
            try:
                value = setting.parse(raw)
            except ValueError:
                raise OptionError(f"{setting.env}={raw!r} is not a valid {setting.kind.__name__}") from None
        if value is not None:
            setattr(config, setting.name, Path(value) if setting.kind is Path else value)
    if environ.get(TOKENS_ENV):
        config.tokens = tuple(t for t in environ[TOKENS_ENV].replace(",", " ").split() if t)
    config.validate()
    return config


if __name__ == "__main__":  # pragma: no cover
    print(markdown_table())
