"""Service settings: command-line flags first, then ``COVIAX_*`` environment variables, then defaults.

The defaults are here (:class:`ServiceConfig`); the flags, the environment variables and the table
of docs/SERVICE.md "Configuration" are made from :data:`coviax_service.settings.SETTINGS`, which also
reads them (:func:`coviax_service.settings.from_env_and_flags`). The Dockerfiles and
k8s/base/configmap.yaml set the environment variables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from coviax.errors import OptionError
from coviax.lesions import SERVED_ENGINES
from coviax.lungs import LUNG_METHODS

GiB = 1024**3


@dataclass
class ServiceConfig:
    data_dir: Path = Path("coviax-data")
    host: str = "[::]"
    port: int = 50051
    metrics_port: int = 9090  # 0 = no metrics endpoint
    engine: str = SERVED_ENGINES[0]  # unet (shipped U-Net B) | kmeans
    device: str = "cpu"  # cpu | cuda
    weights: str | None = None  # U-Net checkpoint (default: the shipped U-Net B)
    lungs: str = LUNG_METHODS[0]  # default lung method (auto), one of LUNG_METHODS
    tokens_file: str | None = None
    tokens: tuple[str, ...] = ()
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None  # set = mutual TLS (client certificates required)
    max_concurrent_scans: int = 4
    workers: int = 2
    worker_memory_gb: float = 12.0  # address space of each worker process; 0 = no cap (see Setting help)
    max_queued_slices: int = 2048
    max_scan_bytes: int = 2 * GiB
    max_slices: int = 2000
    batch_slices: int = 16
    retention_days: float = 7.0  # 0 = keep artifacts forever
    retention_max_bytes: int = 0  # 0 = no size limit
    drain_seconds: float = 30.0
    max_chunk_bytes: int = 4 * 1024**2
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.engine not in SERVED_ENGINES:
            raise OptionError(f"COVIAX_ENGINE/--engine {self.engine!r}: choose {' or '.join(SERVED_ENGINES)}")
        if self.lungs not in LUNG_METHODS:
            raise OptionError(f"COVIAX_LUNGS/--lungs {self.lungs!r}: choose {', '.join(LUNG_METHODS)}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise OptionError(f"COVIAX_DEVICE/--device {self.device!r}: choose cpu or cuda")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise OptionError("TLS needs both COVIAX_TLS_CERT and COVIAX_TLS_KEY (or --tls-cert and --tls-key)")
        if self.tls_client_ca and not self.tls_cert:
            raise OptionError("COVIAX_TLS_CLIENT_CA (mutual TLS) needs COVIAX_TLS_CERT and COVIAX_TLS_KEY too")
        for name in ("max_concurrent_scans", "workers", "max_queued_slices", "max_slices", "batch_slices"):
            if getattr(self, name) < 1:
                raise OptionError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if not self.worker_memory_gb >= 0:
            raise OptionError(f"worker_memory_gb must be 0 (no cap) or more GiB (got {self.worker_memory_gb})")
        if 0 < self.worker_memory_gb < 2:
            raise OptionError(f"worker_memory_gb {self.worker_memory_gb}: a worker needs about 1.2 GiB of address "
                              "space for its libraries alone; give at least 2 (or 0 for no cap)")
        for path in (self.tls_cert, self.tls_key, self.tls_client_ca, self.tokens_file):
            if path and not Path(path).is_file():
                raise OptionError(f"{path}: no such file (named by a COVIAX_TLS_* / COVIAX_TOKENS_FILE setting)")

    def load_tokens(self) -> frozenset[str]:
        """The token entries (first word of each line of the tokens file, plus ``tokens``)."""
        return frozenset(c.secret.decode() if not c.hashed else "sha256:" + c.secret.decode()
                         for c in self.load_credentials())

    def load_credentials(self) -> list:
        """Bearer tokens and their tenants: ``TOKEN [TENANT]`` or ``sha256:HEX [TENANT]`` per line of the tokens
        file (blank lines and # comments skipped), plus ``tokens`` (no tenant)."""
        from coviax_service.auth import Credential

        credentials = [Credential.parse(t) for t in self.tokens if t]
        if self.tokens_file:
            for number, line in enumerate(Path(self.tokens_file).read_text().splitlines(), 1):
                line = line.strip()
                if line and not line.startswith("#"):
                    try:
                        credentials.append(Credential.parse(line))
                    except ValueError as exc:
                        raise OptionError(f"{self.tokens_file}, line {number}: {exc}") from None
        return credentials
