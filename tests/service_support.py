"""Helpers for the service tests (tests/test_service*.py): small series, servers, certificates."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from coviax.cli import sample_scan_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_small_series(dst: Path, n: int = 16, step: int = 4, z0: int = 20, modality: str = "CT") -> Path:
    """``n`` slices of the real chest CT, every ``step``-th pixel (128 x 128 for step 4): a real, small series."""
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    for f in sorted(sample_scan_path().glob("*.dcm"))[z0 : z0 + n]:
        ds = pydicom.dcmread(f)
        pixels = np.ascontiguousarray(ds.pixel_array[::step, ::step])
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelSpacing = [float(v) * step for v in ds.PixelSpacing]
        ds.PixelData = pixels.tobytes()
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Modality = modality
        ds.save_as(dst / f.name)
    return dst


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def sample_value(server_thread, name: str, labels: dict | None = None) -> float | None:
    return server_thread.server.metrics.registry.get_sample_value(name, labels or {})


@contextlib.contextmanager
def running_server(data_dir: Path, prebuilt=None, **overrides):
    """An in-process server on a free loopback port; yields the ServerThread. ``prebuilt``: an engine object."""
    from coviax_service.config import ServiceConfig
    from coviax_service.server import ServerThread

    config = ServiceConfig(data_dir=Path(data_dir), host="127.0.0.1", port=0, metrics_port=0, workers=1,
                           lungs="classical", engine="kmeans", drain_seconds=0)
    for key, value in overrides.items():
        setattr(config, key, value)
    config.validate()
    server = ServerThread(config, engine=prebuilt)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class GatedEngine:
    """Wraps a U-Net engine: ``predict_slices`` waits while ``gate`` is clear (to hold slices in the queue)."""

    def __init__(self, inner, gate: threading.Event | None = None):
        self._inner = inner
        self.gate = gate or threading.Event()
        self.gate.set()
        self.batches = 0

    def predict_slices(self, hu):
        self.gate.wait(60)
        self.batches += 1
        return self._inner.predict_slices(hu)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def tiny_unet_engine(tmp_dir: Path):
    """A random-initialised small U-Net (the shipped U-Net B weights do not exist yet)."""
    import torch

    from coviax.lesions.unet import UNetEngine
    from coviax.lesions.unet_model import UNet2D, UNetConfig, save_checkpoint

    torch.manual_seed(0)
    path = Path(tmp_dir) / "unet_random.pt"
    save_checkpoint(UNet2D(UNetConfig(depth=3, width=8, input_size=64)), path)  # small input: fast on CPU
    return UNetEngine.from_checkpoint(str(path), device="cpu", batch_size=4, precision="fp32"), path


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate, with openssl (EC P-256)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=coviax-test-ca",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for name, ext in (("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
                      ("client", "extendedKeyUsage=clientAuth\n")):
        (folder / f"{name}.ext").write_text(ext)
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return {n: folder / n for n in ("ca.pem", "server.pem", "server.key", "client.pem", "client.key")}


def header_identifiers(series) -> set[str]:
    """Every person name, ID, date and time value (6 characters or more) in the headers of ``series``'s
    instances: none may appear in what the service logs or exports as metrics."""
    import pydicom

    values = set()
    for path in series.glob("*.dcm"):
        for elem in pydicom.dcmread(path, stop_before_pixels=True).iterall():
            if elem.VR in ("PN", "DA", "DT", "TM") or elem.keyword.endswith("ID"):
                for v in (elem.value if elem.VM > 1 else [elem.value]):
                    if v is not None and len(str(v)) >= 6:
                        values.add(str(v))
    return values
