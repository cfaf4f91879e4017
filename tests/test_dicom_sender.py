"""Results back to a PACS: the C-STORE outbox (coviax_client.sender) against a storage SCP.

The SEG, SR and Secondary Capture are the pipeline's own, made from the bundled real CT. The PACS is a
pynetdicom storage SCP on 127.0.0.1, and dcmtk's storescp (Debian package dcmtk, installed by
``make setup``) in a network namespace of its own, since storescp cannot bind to loopback only. Covered: the right presentation contexts (SEG, Comprehensive 3D SR, SC with RLE or, when the PACS
takes only uncompressed, decompressed), the ledger that never sends a SOP Instance UID twice (also after a
restart), retries with doubling backoff and the dead-letter folder, and the listener's submitter queueing
its results. The round trip through the real service is in tests/test_service_api.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

pytest.importorskip("pynetdicom")

from coviax_client.sender import ResultSender  # noqa: E402

from coviax_client.transport import PacsNode  # noqa: E402
from service_support import free_port  # noqa: E402

STORESCP = shutil.which("storescp")
UNSHARE = shutil.which("unshare")
RESULT_FILES = ("seg.dcm", "measurements_sr.dcm", "report_sc.dcm")


@pytest.fixture(scope="module")
def results(sample_volume, tmp_path_factory) -> dict[str, Path]:
    from coviax.pipeline import SegmentOptions, run

    out = tmp_path_factory.mktemp("results")
    run(sample_volume, out, SegmentOptions(lungs="classical", engine="threshold", outputs=("report", "seg", "sr", "sc")))
    return {name: out / name for name in RESULT_FILES}


class FakePacs:
    """A storage SCP (pynetdicom) on 127.0.0.1 that keeps what it receives in ``folder``.

    dcmtk's storescp cannot bind to loopback only (it listens on every interface), so the detailed tests
    use this one; test_dcmtk_storescp_receives_dicom_send runs storescp inside a network namespace.
    ``rle``: accept RLE Lossless as well as the uncompressed syntaxes (storescp's +xa); default uncompressed only.
    """

    def __init__(self, folder: Path, rle: bool = False, ae_title: str = "PACS"):
        from pynetdicom import AE, StoragePresentationContexts, evt

        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.ae_title = ae_title
        ae = AE(ae_title=ae_title)
        syntaxes = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"] + (["1.2.840.10008.1.2.5"] if rle else [])
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, syntaxes)
        ae.require_called_aet = True

        def on_store(event):
            ds = event.dataset
            ds.file_meta = event.file_meta
            ds.save_as(folder / (str(ds.SOPInstanceUID) + ".dcm"), enforce_file_format=True)
            return 0x0000

        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        self.port = self.server.server_address[1]

    def node(self) -> PacsNode:
        return PacsNode(self.ae_title, "127.0.0.1", self.port, "COVIAX")

    def received(self) -> dict[str, pydicom.Dataset]:
        return {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p) for p in sorted(self.folder.iterdir()) if p.is_file())}

    def stop(self) -> None:
        self.server.shutdown()


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_pacs_node_parse():
    node = PacsNode.parse("ORTHANC@10.0.0.5:4242")
    assert (node.ae_title, node.host, node.port) == ("ORTHANC", "10.0.0.5", 4242)
    assert PacsNode.parse("PACS@[::1]:104").host == "::1"
    for bad in ("10.0.0.5:4242", "ORTHANC@host", "A@h:70000", "WAY_TOO_LONG_AE_TITLE@h:104"):
        with pytest.raises(ValueError, match="PACS node"):
            PacsNode.parse(bad)


def test_seg_sr_sc_are_stored_once_and_the_sc_decompressed_for_an_uncompressed_only_pacs(results, tmp_path):
    pacs = FakePacs(tmp_path / "pacs")  # uncompressed transfer syntaxes only
    try:
        sender = ResultSender(pacs.node(), tmp_path / "spool")
        assert sender.enqueue(results.values()) == 3
        assert sender.enqueue(results.values()) == 0  # already queued
        counts = sender.send_due()
        assert counts == {"sent": 3, "failed": 0, "dead": 0, "waiting": 0}, counts
        got = pacs.received()
        assert set(got) == {_uid(p) for p in results.values()}
        classes = {str(ds.SOPClassUID) for ds in got.values()}
        assert classes == {"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"}
        original = pydicom.dcmread(results["report_sc.dcm"])
        assert original.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
        sc = got[str(original.SOPInstanceUID)]
        assert sc.file_meta.TransferSyntaxUID != "1.2.840.10008.1.2.5"
        assert np.array_equal(sc.pixel_array, original.pixel_array)
        source = pydicom.dcmread(results["seg.dcm"], stop_before_pixels=True)
        assert {str(ds.StudyInstanceUID) for ds in got.values()} == {str(source.StudyInstanceUID)}
        # idempotent: nothing is sent twice, also by a new sender on the same spool (a restart)
        assert sender.enqueue(results.values()) == 0 and sender.send_due()["sent"] == 0
        again = ResultSender(pacs.node(), tmp_path / "spool")
        assert again.enqueue(results.values()) == 0 and again.was_sent(_uid(results["seg.dcm"]))
        assert len((tmp_path / "spool" / "sent.txt").read_text().split()) == 3
        assert len(list((tmp_path / "pacs").iterdir())) == 3
    finally:
        pacs.stop()


def test_rle_secondary_capture_stays_rle_when_the_pacs_accepts_it(results, tmp_path):
    pacs = FakePacs(tmp_path / "pacs", rle=True)
    try:
        sender = ResultSender(pacs.node(), tmp_path / "spool")
        sender.enqueue([results["report_sc.dcm"]])
        assert sender.send_due()["sent"] == 1
        (sc,) = pacs.received().values()
        assert sc.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    finally:
        pacs.stop()


def test_unreachable_pacs_retries_with_doubling_backoff_then_dead_letters(results, tmp_path):
    node = PacsNode("PACS", "127.0.0.1", free_port(), "COVIAX")  # nothing listens there
    sender = ResultSender(node, tmp_path / "spool", max_attempts=3, backoff_s=1.0, timeout_s=5)
    sender.enqueue([results["seg.dcm"]])
    (item,) = sender.pending()
    first = sender.send_due()
    assert first["failed"] == 1 and first["dead"] == 0
    state = json.loads(item.with_suffix(".json").read_text())
    assert state["attempts"] == 1 and "no association" in state["last_error"]
    assert state["next_try"] - state["last_try"] == pytest.approx(1.0, abs=0.05)
    assert sender.send_due() == {"sent": 0, "failed": 0, "dead": 0, "waiting": 1}  # backing off
    time.sleep(1.1)
    assert sender.send_due()["failed"] == 1
    state = json.loads(item.with_suffix(".json").read_text())
    assert state["attempts"] == 2 and state["next_try"] - state["last_try"] == pytest.approx(2.0, abs=0.05)
    time.sleep(2.1)
    assert sender.send_due()["dead"] == 1
    assert sender.pending() == [] and [p.name for p in sender.dead_letters()] == [item.name]
    reason = json.loads((tmp_path / "spool" / "dead-letter" / item.with_suffix(".json").name).read_text())
    assert reason["attempts"] == 3 and "no association" in reason["last_error"]
    assert sender.enqueue([results["seg.dcm"]]) == 0  # dead-lettered: not queued again behind the operator's back
    assert not sender.was_sent(_uid(results["seg.dcm"]))


def test_listener_submitter_queues_its_results_and_the_thread_sends_them(results, tmp_path):
    from coviax_client.submit import sdk_submitter

    class FakeResult:
        job_id = "job-1"
        ratios_pct = {"all": 1.0}

    class FakeClient:
        """Stands in for CoviaxClient: 'downloads' the pipeline's files."""

        def __init__(self):
            self.keys = []

        def segment(self, folder, idempotency_key, **options):
            self.keys.append(idempotency_key)
            return FakeResult()

        def download_all(self, result, out):
            for name, path in results.items():
                shutil.copy(path, Path(out) / name)

    pacs = FakePacs(tmp_path / "pacs")
    sender = ResultSender(pacs.node(), tmp_path / "spool").start()
    try:
        client = FakeClient()
        submit = sdk_submitter(client, sender=sender)
        out = tmp_path / "out"
        out.mkdir()
        (tmp_path / "in").mkdir()
        submit(tmp_path / "in", "series-0123456789abcdef", out, "c" * 64)
        assert client.keys == ["listener-series-0123456789abcdef-" + "c" * 32]
        assert sender.wait_idle(60), "the sender thread did not empty the outbox"
        assert set(pacs.received()) == {_uid(p) for p in results.values()}
        submit(tmp_path / "in", "series-0123456789abcdef", out, "c" * 64)  # the same job's files again
        assert sender.pending() == []
    finally:
        sender.stop()
        pacs.stop()


def _netns_ok() -> bool:
    if UNSHARE is None or shutil.which("ip") is None:
        return False
    return subprocess.run([UNSHARE, "-n", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(STORESCP is None, reason="dcmtk's storescp not installed (Debian package dcmtk; make setup installs it)")
@pytest.mark.skipif(not _netns_ok(), reason="no network namespace (unshare -n needs CAP_SYS_ADMIN): storescp cannot "
                                            "bind to loopback only, so it runs only where it can be isolated")
def test_dcmtk_storescp_receives_dicom_send(results, tmp_path):
    """dcmtk's storescp as the PACS, ``coviax-client dicom-send`` as the sender, alone in a network namespace."""
    import sys

    pacs = tmp_path / "pacs"
    pacs.mkdir()
    spool = tmp_path / "spool"
    files = " ".join(str(p) for p in results.values())
    script = f"""
set -e
ip link set lo up
{STORESCP} -aet PACS -od {pacs} 11112 &
scp=$!
for i in $(seq 100); do echoscu -aec PACS 127.0.0.1 11112 2>/dev/null && break; sleep 0.2; done
rc=0
{sys.executable} -m coviax_client.cli dicom-send --pacs PACS@127.0.0.1:11112 --spool {spool} {files} || rc=$?
{sys.executable} -m coviax_client.cli dicom-send --pacs PACS@127.0.0.1:11112 --spool {spool} {files} || rc=$?
kill $scp
exit $rc
"""
    proc = subprocess.run([UNSHARE, "-n", "bash", "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 of 3 instance(s) queued" in proc.stderr and "0 of 3 instance(s) queued" in proc.stderr
    got = {str(pydicom.dcmread(p).SOPInstanceUID): pydicom.dcmread(p) for p in pacs.iterdir()}
    assert set(got) == {_uid(p) for p in results.values()}  # each once, SEG and SR and SC
    sc = got[_uid(results["report_sc.dcm"])]
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.file_meta.TransferSyntaxUID != "1.2.840.10008.1.2.5"


def test_sender_and_listener_import_neither_torch_nor_the_core():
    import sys

    code = ("import sys, coviax_client.sender, coviax_client.listener, coviax_client.pseudonym, coviax_client.cli; "
            "bad = [m for m in sys.modules if m in ('torch', 'coviax') or m.startswith(('torch.', 'coviax.'))]; "
            "print(bad); sys.exit(1 if bad else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


# ------------------------------------------------------------------ DICOMweb STOW-RS


class StowServer:
    """A loopback STOW-RS endpoint: parses the multipart body, answers as ``answer(uids) -> (status, json)``."""

    def __init__(self, answer):
        import http.server
        import threading
        from email.parser import BytesParser
        from email.policy import HTTP

        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                msg = BytesParser(policy=HTTP).parsebytes(
                    b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
                from io import BytesIO

                uids = [str(pydicom.dcmread(BytesIO(part.get_payload(decode=True)), stop_before_pixels=True).SOPInstanceUID)
                        for part in msg.iter_parts()]
                outer.requests.append({"path": self.path, "uids": uids, "auth": self.headers.get("Authorization"),
                                       "type": self.headers["Content-Type"]})
                status, payload = answer(uids)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/dicom-web"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()


def _ref(uid):
    return {"00081155": {"vr": "UI", "Value": [uid]}}


def test_stow_rs_sends_all_in_one_request_and_retries_only_what_failed(results, tmp_path):
    from coviax_client.transport import StowTarget

    seg_uid = _uid(results["seg.dcm"])
    rounds = []

    def answer(uids):
        rounds.append(uids)
        if len(rounds) == 1:  # the first time the SEG fails (0xA700 out of resources), the rest is stored
            return 202, {"00081199": {"vr": "SQ", "Value": [_ref(u) for u in uids if u != seg_uid]},
                         "00081198": {"vr": "SQ", "Value": [{**_ref(seg_uid), "00081197": {"vr": "US", "Value": [0xA700]}}]}}
        return 200, {"00081199": {"vr": "SQ", "Value": [_ref(u) for u in uids]}}

    server = StowServer(answer)
    try:
        sender = ResultSender(StowTarget(server.url, token="t0ken"), tmp_path / "spool", backoff_s=0.1)
        assert sender.enqueue(results.values()) == 3
        first = sender.send_due()
        assert first["sent"] == 2 and first["failed"] == 1
        state = json.loads(next((tmp_path / "spool" / "outbox").glob("*.json")).read_text())
        assert "0xA700" in state["last_error"] and "out of resources" in state["last_error"]
        time.sleep(0.15)
        assert sender.send_due()["sent"] == 1
        assert rounds[1] == [seg_uid]  # only the failed instance went again
        assert sender.enqueue(results.values()) == 0
    finally:
        server.stop()
    req = server.requests[0]
    assert req["path"] == "/dicom-web/studies" and req["auth"] == "Bearer t0ken"
    assert req["type"].startswith('multipart/related; type="application/dicom"')
    assert sorted(req["uids"]) == sorted(_uid(p) for p in results.values())


def test_stow_rs_http_error_is_retried_then_dead_lettered(results, tmp_path):
    from coviax_client.transport import StowTarget

    server = StowServer(lambda uids: (503, {}))
    try:
        sender = ResultSender(StowTarget(server.url), tmp_path / "spool", max_attempts=2, backoff_s=0.05)
        sender.enqueue([results["measurements_sr.dcm"]])
        assert sender.send_due()["failed"] == 1
        time.sleep(0.1)
        assert sender.send_due()["dead"] == 1
        (reason,) = (tmp_path / "spool" / "dead-letter").glob("*.json")
        assert "HTTP 503" in json.loads(reason.read_text())["last_error"]
    finally:
        server.stop()
    with pytest.raises(ValueError, match="STOW-RS URL"):
        StowTarget("pacs:8042/dicom-web")


def test_deidentified_results_get_the_identity_back_before_they_go_to_the_pacs(results, sample_dir, tmp_path):
    """--deidentify with --pacs: the service sees blank patient attributes, the PACS gets the patient's study."""
    from coviax_client.files import deidentify_dataset
    from coviax_client.submit import reidentify, sdk_submitter

    blanked = tmp_path / "from-service"
    blanked.mkdir()
    for name, path in results.items():  # what the service returns for a de-identified upload
        ds = deidentify_dataset(pydicom.dcmread(path))
        ds.save_as(blanked / name)
    assert str(pydicom.dcmread(blanked / "seg.dcm").PatientID) == ""

    class FakeResult:
        job_id = "job-1"
        ratios_pct = {"all": 1.0}

    class FakeClient:
        def segment(self, folder, idempotency_key, deidentify, **options):
            assert deidentify is True
            return FakeResult()

        def download_all(self, result, out):
            for name in results:
                shutil.copy(blanked / name, Path(out) / name)

    incoming = tmp_path / "incoming"
    incoming.mkdir()
    source_file = sorted(sample_dir.glob("*.dcm"))[0]
    shutil.copy(source_file, incoming / "a.dcm")
    source = pydicom.dcmread(source_file, stop_before_pixels=True)
    pacs = FakePacs(tmp_path / "pacs")
    try:
        sender = ResultSender(pacs.node(), tmp_path / "spool")
        out = tmp_path / "out"
        out.mkdir()
        sdk_submitter(FakeClient(), deidentify=True, sender=sender)(incoming, "series-x", out, "d" * 64)
        assert sender.send_due()["sent"] == 3
        for ds in pacs.received().values():
            assert ds.PatientID == source.PatientID and ds.PatientName == source.PatientName
            assert ds.StudyInstanceUID == source.StudyInstanceUID
            assert "PatientIdentityRemoved" not in ds and "DeidentificationMethod" not in ds
        sc = pydicom.dcmread(out / "report_sc.dcm")
        assert np.array_equal(sc.pixel_array, pydicom.dcmread(results["report_sc.dcm"]).pixel_array)
    finally:
        pacs.stop()
    # a result from another study is never given this patient's identity
    other = pydicom.dcmread(blanked / "seg.dcm")
    other.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.7"
    other.save_as(tmp_path / "other.dcm")
    with pytest.raises(ValueError, match="not the source study"):
        reidentify([tmp_path / "other.dcm"], source_file)


def test_a_reanalysis_gets_new_series_numbers(results, tmp_path):
    """A changed re-push is analysed again: its SEG/SR/SC must not reuse 9901-9903 in the PACS's study."""
    from coviax_client.submit import sdk_submitter

    class FakeResult:
        job_id = "job"
        ratios_pct = {"all": 1.0}

    class FakeClient:
        def segment(self, folder, idempotency_key, **options):
            return FakeResult()

        def download_all(self, result, out):
            for name, path in results.items():
                shutil.copy(path, Path(out) / name)

    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "in").mkdir()
    submit = sdk_submitter(FakeClient())
    numbers = []
    for content in ("a" * 64, "b" * 64, "a" * 64):  # first, changed, and the first content again
        submit(tmp_path / "in", "series-k", out, content)
        numbers.append([int(pydicom.dcmread(out / n, stop_before_pixels=True).SeriesNumber) for n in RESULT_FILES])
    assert numbers[0] == [9901, 9902, 9903]
    assert numbers[1] == [9911, 9912, 9913]
    assert numbers[2] == [9901, 9902, 9903]  # the same content as the first: the same numbers
