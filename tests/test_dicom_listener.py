"""The C-STORE listener against outside senders (dcmtk's storescu / echoscu), without the gRPC service.

The service side is a recording ``submit``; tests/test_service_api.py runs the listener against the real
service. Covered here: compressed transfer syntaxes (encoded by dcmtk's dcmcjpeg / dcmcjpls / dcmcrle and,
for JPEG 2000, pylibjpeg-openjpeg), routing rules, AE-title and peer allow-lists, content-keyed re-pushes,
resuming incoming/ after a restart, and SIGTERM on the real ``coviax-client dicom-listener`` process.
dcmtk comes from ``make setup`` (Debian package dcmtk); tests that need it skip, naming it, where it is absent.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

pytest.importorskip("pynetdicom")

from coviax_client.listener import ACCEPTED_SYNTAXES, DicomListener, content_key, series_key  # noqa: E402
from coviax_client.routing import PeerFilter, RoutingRules  # noqa: E402
from service_support import free_port, wait_for  # noqa: E402

STORESCU = shutil.which("storescu")
ECHOSCU = shutil.which("echoscu")
needs_dcmtk = pytest.mark.skipif(STORESCU is None or ECHOSCU is None,
                                 reason="dcmtk's storescu/echoscu not installed (Debian package dcmtk; make setup installs it)")

N_SLICES = 20  # slices of the real CT pushed per test: enough for a series, quick to move


class Recorder:
    """A ``submit`` that records what the listener hands over."""

    def __init__(self):
        self.calls = []
        self.event = threading.Event()

    def __call__(self, folder: Path, key: str, out: Path, content: str) -> None:
        files = sorted(folder.glob("*.dcm"))
        syntaxes = {str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID) for f in files}
        self.calls.append({"key": key, "files": len(files), "content": content, "syntaxes": syntaxes,
                           "pixels": [pydicom.dcmread(f).pixel_array for f in files[:2]]})
        (out / "job.txt").write_text(f"job-{len(self.calls)}\n")
        self.event.set()

    def wait(self, n: int, timeout: float = 60) -> None:
        wait_for(lambda: len(self.calls) >= n, timeout=timeout, what=f"{n} submission(s)")


def _listener(tmp_path, recorder, **kwargs) -> DicomListener:
    kwargs.setdefault("idle_seconds", 0.5)
    kwargs.setdefault("rules", RoutingRules(min_slices=4))
    return DicomListener("COVIAX", 0, tmp_path / "listener", recorder, host="127.0.0.1", **kwargs).start()


def _storescu(port: int, folder: Path, *extra: str, aet: str = "TESTSCU", aec: str = "COVIAX") -> subprocess.CompletedProcess:
    return subprocess.run([STORESCU, "-aet", aet, "-aec", aec, *extra, "127.0.0.1", str(port), "+sd", str(folder)],
                          capture_output=True, text=True, timeout=120)


def _echoscu(port: int, aet: str = "TESTSCU", aec: str = "COVIAX") -> subprocess.CompletedProcess:
    return subprocess.run([ECHOSCU, "-aet", aet, "-aec", aec, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture()
def slices(sample_dir, tmp_path) -> Path:
    target = tmp_path / "ct"
    target.mkdir()
    for f in sorted(sample_dir.glob("*.dcm"))[:N_SLICES]:
        shutil.copy(f, target / f.name)
    return target


# ------------------------------------------------------------------ transfer syntaxes


def _encode(src: Path, dst: Path, syntax: str) -> None:
    dst.mkdir()
    for f in sorted(src.glob("*.dcm")):
        if syntax == "jpeg-lossless":
            subprocess.run(["dcmcjpeg", "+e1", str(f), str(dst / f.name)], check=True, capture_output=True)
        elif syntax == "jpeg-ls":
            subprocess.run(["dcmcjpls", "+el", str(f), str(dst / f.name)], check=True, capture_output=True)
        elif syntax == "rle":
            subprocess.run(["dcmcrle", str(f), str(dst / f.name)], check=True, capture_output=True)
        elif syntax == "jpeg2000":
            ds = pydicom.dcmread(f)
            ds.compress(pydicom.uid.JPEG2000Lossless, encoding_plugin="pylibjpeg")
            ds.save_as(dst / f.name)


@needs_dcmtk
@pytest.mark.parametrize("syntax,uid,flag", [
    ("jpeg-lossless", "1.2.840.10008.1.2.4.70", "-xs"),
    ("jpeg-ls", "1.2.840.10008.1.2.4.80", "-xt"),
    ("jpeg2000", "1.2.840.10008.1.2.4.90", "-xv"),
    ("rle", "1.2.840.10008.1.2.5", "-xr"),
])
def test_compressed_push_is_accepted_as_sent_and_decodes_bit_exact(slices, tmp_path, syntax, uid, flag):
    assert uid in ACCEPTED_SYNTAXES
    encoded = tmp_path / syntax
    _encode(slices, encoded, syntax)
    assert str(pydicom.dcmread(next(encoded.glob("*.dcm"))).file_meta.TransferSyntaxUID) == uid
    rec = Recorder()
    listener = _listener(tmp_path, rec)
    try:
        # storescu proposes only this compressed syntax (and no uncompressed fallback with -R)
        proc = _storescu(listener.port, encoded, flag, "-R")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        rec.wait(1)
    finally:
        listener.stop()
    call = rec.calls[0]
    assert call["files"] == N_SLICES and call["syntaxes"] == {uid}
    first = sorted(slices.glob("*.dcm"))
    originals = {str(pydicom.dcmread(f).SOPInstanceUID): pydicom.dcmread(f).pixel_array for f in first}
    # the received files decode to the original pixels (pylibjpeg, as the service's reader does)
    assert any(any(np.array_equal(p, o) for o in originals.values()) for p in call["pixels"])
    for p in call["pixels"]:
        assert any(np.array_equal(p, o) for o in originals.values())


# ------------------------------------------------------------------ who may store


@needs_dcmtk
def test_echo_and_ae_title_and_peer_allow_lists(tmp_path):
    rec = Recorder()
    listener = _listener(tmp_path, rec, allowed_calling=["MODALITY1", "PACS"])
    try:
        ok = _echoscu(listener.port, aet="PACS")
        assert ok.returncode == 0, ok.stdout + ok.stderr
        bad_calling = _echoscu(listener.port, aet="INTRUDER")
        assert bad_calling.returncode != 0 and "Rejected" in bad_calling.stdout + bad_calling.stderr
        assert "Calling AE Title Not Recognized" in bad_calling.stdout + bad_calling.stderr
        bad_called = _echoscu(listener.port, aet="PACS", aec="SOMEONE")
        assert bad_called.returncode != 0 and "Called AE Title Not Recognized" in bad_called.stdout + bad_called.stderr
    finally:
        listener.stop()
    # a listener that allows only another network refuses loopback
    listener = _listener(tmp_path, rec, allowed_peers=["10.99.0.0/16"])
    try:
        refused = _echoscu(listener.port)
        assert refused.returncode != 0 and "Rejected" in refused.stdout + refused.stderr
    finally:
        listener.stop()


def test_peer_filter_and_defaults():
    assert PeerFilter().allows("127.0.0.1") and PeerFilter().allows("::1")
    assert not PeerFilter().allows("192.168.1.20")
    net = PeerFilter(["10.1.0.0/16", "192.168.1.5"])
    assert net.allows("10.1.200.3") and net.allows("::ffff:10.1.0.9") and net.allows("192.168.1.5")
    assert not net.allows("10.2.0.1") and not net.allows("not-an-ip")
    assert PeerFilter([]).allows("203.0.113.7")  # empty = any
    with pytest.raises(ValueError, match="not an IP address"):
        PeerFilter(["pacs.example.org"])
    import inspect

    assert inspect.signature(DicomListener).parameters["host"].default == "127.0.0.1"
    from coviax_client.cli import build_parser

    args = build_parser().parse_args(["dicom-listener", "--out", "x"])
    assert args.host == "127.0.0.1" and args.min_slices == 16


# ------------------------------------------------------------------ routing rules


@needs_dcmtk
def test_only_ct_is_analysed_and_short_or_unwanted_series_are_not(slices, tmp_path):
    mixed = tmp_path / "study"
    shutil.copytree(slices, mixed)
    shutil.copy(get_testdata_file("MR_small.dcm"), mixed / "mr.dcm")  # another series, modality MR
    short = tmp_path / "short"
    short.mkdir()
    for i, f in enumerate(sorted(slices.glob("*.dcm"))[:3]):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.1.{i + 1}"
        ds.save_as(short / f.name)
    rec = Recorder()
    listener = _listener(tmp_path, rec, rules=RoutingRules(min_slices=5))
    try:
        proc = _storescu(listener.port, mixed)
        assert proc.returncode == 0, proc.stdout + proc.stderr  # the MR is acknowledged, not refused
        assert _storescu(listener.port, short).returncode == 0
        rec.wait(1)
        skipped = tmp_path / "listener" / series_key("1.2.826.0.1.3680043.8.498.1") / "skipped.txt"
        wait_for(skipped.is_file, timeout=30, what="skipped.txt for the 3-slice series")
        time.sleep(1.5)
    finally:
        listener.stop()
    assert len(rec.calls) == 1 and rec.calls[0]["files"] == N_SLICES  # the CT only, without the MR
    assert "fewer than the minimum of 5" in skipped.read_text()
    mr_uid = str(pydicom.dcmread(get_testdata_file("MR_small.dcm"), stop_before_pixels=True).SeriesInstanceUID)
    assert not (tmp_path / "listener" / series_key(mr_uid)).exists()
    assert not any((tmp_path / "listener" / "incoming").iterdir())


def test_routing_rules_unit():
    ct = pydicom.Dataset()
    ct.Modality, ct.SeriesDescription, ct.ImageType = "CT", "Thorax 1.0 B60f", ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert RoutingRules().refuse(ct) is None
    seg = pydicom.Dataset()
    seg.Modality = "SEG"
    assert "modality SEG" in RoutingRules().refuse(seg)
    scout = pydicom.Dataset()
    scout.Modality, scout.ImageType = "CT", ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    assert RoutingRules().refuse(scout) == "localizer image"
    assert RoutingRules(skip_localizers=False).refuse(scout) is None
    assert RoutingRules(series_description=r"thorax|chest").refuse(ct) is None
    assert RoutingRules(series_description=r"^head").refuse(ct) == "series description does not match the rule"
    assert RoutingRules(modalities=("CT", "MR")).refuse(seg) is not None
    with pytest.raises(ValueError, match="not a regular expression"):
        RoutingRules(series_description="(")


# ------------------------------------------------------------------ re-pushes and restarts


@needs_dcmtk
def test_repush_is_processed_again_only_when_the_content_differs(slices, tmp_path, caplog):
    rec = Recorder()
    caplog.set_level("INFO", logger="coviax_client")
    listener = _listener(tmp_path, rec)
    try:
        assert _storescu(listener.port, slices).returncode == 0
        rec.wait(1)
        assert _storescu(listener.port, slices).returncode == 0  # identical re-push
        time.sleep(2.5)
        assert len(rec.calls) == 1, "an identical re-push was processed again"
        messages = [r.getMessage() for r in caplog.records]
        assert sum("submitting" in m for m in messages) == 1, messages  # not said for the unchanged re-push
        assert any("not processed again" in m for m in messages)
        # same UIDs, same count, one slice's pixels changed
        f = sorted(slices.glob("*.dcm"))[5]
        ds = pydicom.dcmread(f)
        arr = ds.pixel_array.copy()
        arr[100:120, 100:120] += 50
        ds.PixelData = arr.tobytes()
        ds.save_as(f)
        assert _storescu(listener.port, slices).returncode == 0
        rec.wait(2)
    finally:
        listener.stop()
    assert rec.calls[1]["key"] == rec.calls[0]["key"] and rec.calls[1]["files"] == rec.calls[0]["files"]
    assert rec.calls[1]["content"] != rec.calls[0]["content"]
    out = tmp_path / "listener" / rec.calls[0]["key"]
    assert (out / "content.txt").read_text().strip() == rec.calls[1]["content"]
    assert any("every submission finished within" in r.getMessage() for r in caplog.records)  # said on stop


@needs_dcmtk
def test_a_failed_reanalysis_leaves_its_error_alone_and_the_previous_results_in_previous(slices, tmp_path):
    """Issue 31 item 3: error.txt beside the previous run's report.json and seg.dcm was ambiguous."""
    rec = Recorder()

    def submit(folder: Path, key: str, out: Path, content: str) -> None:
        if rec.calls:  # the second analysis fails
            rec.calls.append({"key": key})
            raise RuntimeError("the service refused the scan")
        rec(folder, key, out, content)
        (out / "report.json").write_text("{}\n")
        (out / "seg.dcm").write_bytes(b"SEG")

    listener = _listener(tmp_path, submit)
    try:
        assert _storescu(listener.port, slices).returncode == 0
        rec.wait(1)
        f = sorted(slices.glob("*.dcm"))[3]
        ds = pydicom.dcmread(f)
        arr = ds.pixel_array.copy()
        arr[50:70, 50:70] += 40
        ds.PixelData = arr.tobytes()
        ds.save_as(f)  # new content: analysed again, and this time it fails
        assert _storescu(listener.port, slices).returncode == 0
        out = tmp_path / "listener" / rec.calls[0]["key"]
        wait_for(lambda: (out / "error.txt").is_file(), timeout=60, what="error.txt of the second analysis")
    finally:
        listener.stop()
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["error.txt"]
    assert "refused the scan" in (out / "error.txt").read_text()
    assert sorted(p.name for p in (out / "previous").iterdir()) == ["content.txt", "job.txt", "report.json", "seg.dcm"]


def test_content_key_depends_on_uids_and_pixels_not_file_names(slices, tmp_path):
    a = content_key(slices)
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for i, f in enumerate(sorted(slices.glob("*.dcm"))):
        shutil.copy(f, renamed / f"x{i:03d}.dcm")
    assert content_key(renamed) == a
    ds = pydicom.dcmread(renamed / "x000.dcm")
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.99"
    ds.save_as(renamed / "x000.dcm")
    assert content_key(renamed) != a


@needs_dcmtk
def test_incoming_is_resumed_after_a_restart(slices, tmp_path):
    rec = Recorder()
    listener = _listener(tmp_path, rec, idle_seconds=3600)  # never complete while this one runs
    try:
        assert _storescu(listener.port, slices).returncode == 0
    finally:
        listener.stop(grace_seconds=0)
    assert rec.calls == []
    folder = tmp_path / "listener" / "incoming"
    kept = [p for p in folder.iterdir() if p.is_dir()]
    assert len(kept) == 1 and len(list(kept[0].glob("*.dcm"))) == N_SLICES
    (kept[0] / "half-written.dcm.part").write_bytes(b"DICM")  # what a kill during a write would leave
    listener = _listener(tmp_path, rec)
    try:
        rec.wait(1)
    finally:
        listener.stop()
    assert rec.calls[0]["key"] == kept[0].name and rec.calls[0]["files"] == N_SLICES
    wait_for(lambda: not kept[0].exists(), timeout=10, what="incoming/ emptied after processing")


@needs_dcmtk
def test_sigterm_keeps_what_is_in_flight_for_the_next_start(slices, tmp_path):
    out = tmp_path / "listener"
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "coviax_client.cli", "dicom-listener", "--server", "127.0.0.1:9",  # no service needed
         "--out", str(out), "--port", str(port), "--idle-seconds", "3600", "--grace-seconds", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail("the listener exited: " + proc.stdout.read())
            if _echoscu(port).returncode == 0:
                break
            time.sleep(0.5)
        assert _storescu(port, slices).returncode == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stdout.read()
        log_text = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    # issue 31 item 5: log lines carry a timestamp, and stopping says what stays behind
    import re

    log_lines = [line for line in log_text.splitlines() if "coviax_client" in line]
    assert log_lines and all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line) for line in log_lines), log_text
    assert "stay in incoming/ for the next start" in log_text
    kept = [p for p in (out / "incoming").iterdir() if p.is_dir()]
    assert len(kept) == 1 and len(list(kept[0].glob("*.dcm"))) == N_SLICES
    # the next start picks it up
    rec = Recorder()
    listener = _listener(tmp_path, rec)
    try:
        rec.wait(1)
    finally:
        listener.stop()
    assert rec.calls[0]["files"] == N_SLICES


# ------------------------------------------------------------------ DICOM TLS


def _pki(folder: Path) -> dict[str, Path]:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate (openssl)."""
    folder.mkdir()
    f = {n: folder / n for n in ("ca.key", "ca.crt", "srv.key", "srv.csr", "srv.crt", "cli.key", "cli.csr", "cli.crt", "san.cnf")}
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(f["ca.key"]), "-out", str(f["ca.crt"]),
        "-days", "2", "-subj", "/CN=COViaX test CA")
    f["san.cnf"].write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for who in ("srv", "cli"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(f[f"{who}.key"]), "-out", str(f[f"{who}.csr"]),
            "-subj", f"/CN={who}")
        run("x509", "-req", "-in", str(f[f"{who}.csr"]), "-CA", str(f["ca.crt"]), "-CAkey", str(f["ca.key"]),
            "-CAcreateserial", "-out", str(f[f"{who}.crt"]), "-days", "2", "-extfile", str(f["san.cnf"]))
    return f


@needs_dcmtk
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed (needed to make test certificates)")
def test_dicom_tls_mutual_and_the_sender_over_tls(tmp_path):
    from coviax_client.dicom_cli import dicom_tls
    from coviax_client.sender import ResultSender
    from coviax_client.transport import PacsNode

    pki = _pki(tmp_path / "pki")
    rec = Recorder()
    tls = dicom_tls(str(pki["srv.crt"]), str(pki["srv.key"]), str(pki["ca.crt"]), server_side=True)
    listener = _listener(tmp_path, rec, ssl_context=tls)
    try:
        ok = subprocess.run([ECHOSCU, "-aec", "COVIAX", "+tls", str(pki["cli.key"]), str(pki["cli.crt"]),
                             "+cf", str(pki["ca.crt"]), "127.0.0.1", str(listener.port)], capture_output=True, text=True,
                            timeout=60)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        plain = _echoscu(listener.port)
        assert plain.returncode != 0  # no TLS: refused
        anonymous = subprocess.run([ECHOSCU, "-aec", "COVIAX", "+tla", "+cf", str(pki["ca.crt"]), "127.0.0.1",
                                    str(listener.port)], capture_output=True, text=True, timeout=60)
        assert anonymous.returncode != 0  # TLS without a client certificate: refused (mutual TLS)
    finally:
        listener.stop()
    # server-only TLS: the sender (TLS client trusting the CA) stores an instance in it
    listener = _listener(tmp_path, rec, ssl_context=dicom_tls(str(pki["srv.crt"]), str(pki["srv.key"]), None, True))
    try:
        sender = ResultSender(PacsNode("COVIAX", "127.0.0.1", listener.port), tmp_path / "spool",
                              ssl_context=dicom_tls(None, None, str(pki["ca.crt"]), server_side=False))
        sender.enqueue([Path(get_testdata_file("CT_small.dcm"))])
        assert sender.send_due()["sent"] == 1
    finally:
        listener.stop()


@needs_dcmtk
def test_stop_during_a_submission_keeps_it_and_a_repush_meanwhile_is_not_lost(slices, tmp_path):
    """A submission still running when the listener stops leaves its files for the next start; a re-push that
    arrives while the first push is being processed gets a folder of its own (nothing deleted under it)."""
    started = threading.Event()
    calls = []
    holder = {}

    def slow_submit(folder, key, out, content):
        calls.append((folder.name, len(list(folder.glob("*.dcm")))))
        started.set()
        deadline = time.monotonic() + 30
        while not holder["listener"]._stop.is_set():  # runs until the listener is told to stop
            if time.monotonic() > deadline:
                raise RuntimeError("never stopped")
            time.sleep(0.05)
        raise ConnectionError("channel closed by the shutdown")  # what the SDK raises once the client is closed

    listener = holder["listener"] = _listener(tmp_path, slow_submit, idle_seconds=0.5)
    try:
        assert _storescu(listener.port, slices).returncode == 0
        assert started.wait(30)
        assert _storescu(listener.port, slices).returncode == 0  # re-push while the first is being processed
        incoming = tmp_path / "listener" / "incoming"
        wait_for(lambda: len([p for p in incoming.iterdir() if p.is_dir()]) == 2, timeout=30,
                 what="the re-push in a folder of its own")
    finally:
        listener.stop(grace_seconds=5)
    folders = sorted(p for p in (tmp_path / "listener" / "incoming").iterdir() if p.is_dir())
    assert len(folders) == 2 and all(len(list(f.glob("*.dcm"))) == N_SLICES for f in folders)
    assert not (tmp_path / "listener" / calls[0][0] / "error.txt").exists()  # interrupted, not failed
    rec = Recorder()
    listener = _listener(tmp_path, rec)
    try:
        rec.wait(1)
        time.sleep(1.5)
    finally:
        listener.stop()
    assert len(rec.calls) == 1 and rec.calls[0]["files"] == N_SLICES  # both pushes resumed as one series
    assert not any((tmp_path / "listener" / "incoming").iterdir())
