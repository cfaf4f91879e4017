"""PACS -> COViaX -> PACS with Orthanc as the PACS; run by tests/test_orthanc_roundtrip.py inside a network namespace.

    unshare -n python tests/orthanc_roundtrip.py WORKDIR CT_FOLDER [pseudonymise|deidentify]

Orthanc (1.10, Debian) cannot bind to loopback only, so the test runs this driver in a network namespace
whose only interface is lo: nothing started here is reachable from outside. It starts, with temporary
configuration and storage under WORKDIR:

- Orthanc (RemoteAccessAllowed false, no plugins, the listener as its one DICOM modality);
- ``coviax serve`` (the shipped U-Net B, classical lungs) on 127.0.0.1;
- ``coviax-client dicom-listener`` with ``--pacs ORTHANC@127.0.0.1:4242`` and ``--pseudonymise`` (default)
  or ``--deidentify``: the service gets pseudonymised (new UIDs) or blanked images; the results are
  re-identified on the way back.

Then it uploads the CT to Orthanc over REST, asks Orthanc to C-STORE the study to the listener, and waits
until the SEG, SR and Secondary Capture are back in Orthanc. It checks they are in the same patient and
study and that the SEG references every source instance; with Orthanc's DICOMweb plugin (Debian
orthanc-dicomweb) it also reads the SEG's references back through WADO-RS and stores a copy of the SEG
by STOW-RS with ``coviax-client dicom-send --stow-url``. It prints one JSON line with what it found and
how long push -> results back took. It exits non-zero with a message on any failure, and stops every
process it started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HTTP, DICOM, LISTENER, GRPC = 8042, 4242, 11112, 50051
BIN = Path(sys.executable).parent


def http(method: str, path: str, body: bytes | None = None, ctype: str = "application/json"):
    req = urllib.request.Request(f"http://127.0.0.1:{HTTP}{path}", data=body, method=method,
                                 headers={"Content-Type": ctype} if body is not None else {})
    with urllib.request.urlopen(req, timeout=60) as r:
        data = r.read()
    return json.loads(data) if data[:1] in (b"{", b"[", b'"') else data


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception:
            pass
        time.sleep(0.5)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


#: How the images leave for the service: blanked (--deidentify) or pseudonymised (--pseudonymise SECRET).
PRIVACY = {"deidentify": ["--deidentify"], "pseudonymise": ["--pseudonymise", "{work}/secret"]}


def main(work: Path, ct: Path, mode: str = "pseudonymise") -> int:
    PRIVACY[mode] = [a.format(work=work) for a in PRIVACY[mode]]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    work.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "COViaX round trip", "StorageDirectory": str(work / "orthanc-storage"),
        "IndexDirectory": str(work / "orthanc-index"), "HttpPort": HTTP, "DicomPort": DICOM, "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [], "DicomCheckCalledAet": True,
        "DicomModalities": {"coviax": ["COVIAX", "127.0.0.1", LISTENER]}, "DicomAlwaysAllowStore": False,
        "StableAge": 1,
    }
    dicomweb = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")  # Debian package orthanc-dicomweb
    if dicomweb.is_file():
        config["Plugins"] = [str(dicomweb)]
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
    (work / "orthanc.json").write_text(json.dumps(config, indent=1))
    logs = {name: open(work / f"{name}.log", "w") for name in ("orthanc", "service", "listener")}
    procs = []
    try:
        procs.append(subprocess.Popen(["Orthanc", str(work / "orthanc.json")], stdout=logs["orthanc"], stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen(
            [str(BIN / "coviax"), "serve", "--host", "127.0.0.1", "--port", str(GRPC), "--metrics-port", "0",
             "--data-dir", str(work / "service"), "--engine", "unet", "--lungs", "classical", "--workers", "1"],
            stdout=logs["service"], stderr=subprocess.STDOUT))
        procs.append(subprocess.Popen(
            [str(BIN / "coviax-client"), "dicom-listener", "--server", f"127.0.0.1:{GRPC}", "--out", str(work / "listener"),
             "--port", str(LISTENER), "--ae-title", "COVIAX", "--allow-calling-ae", "ORTHANC", "--idle-seconds", "2",
             "--pacs", f"ORTHANC@127.0.0.1:{DICOM}", "--send-backoff", "2", "--outputs", "report,seg,sr,sc",
             *PRIVACY[mode]],  # the service never sees the patient's attributes; the results must still join them
            stdout=logs["listener"], stderr=subprocess.STDOUT))
        wait(lambda: http("GET", "/system"), 60, "Orthanc's REST API")
        for f in sorted(ct.glob("*.dcm")):
            http("POST", "/instances", f.read_bytes(), "application/dicom")
        (study,) = http("GET", "/studies")
        source_series = http("GET", f"/studies/{study}")["Series"]
        wait(lambda: subprocess.run([str(BIN / "coviax-client"), "health", "--server", f"127.0.0.1:{GRPC}"],
                                    capture_output=True).returncode == 0, 180, "the COViaX service")
        wait(lambda: subprocess.run(["echoscu", "-aec", "COVIAX", "-aet", "ORTHANC", "127.0.0.1", str(LISTENER)],
                                    capture_output=True).returncode == 0, 60, "the listener")
        t0 = time.monotonic()
        http("POST", "/modalities/coviax/store", json.dumps([study]).encode())  # Orthanc pushes the study (C-STORE)
        pushed = time.monotonic() - t0

        def back():
            series = http("GET", f"/studies/{study}")["Series"]
            mods = {http("GET", f"/series/{s}")["MainDicomTags"].get("Modality"): s for s in series if s not in source_series}
            return mods if {"SEG", "SR", "OT"} <= set(mods) else None

        mods = wait(back, 600, "SEG, SR and SC back in Orthanc")
        elapsed = time.monotonic() - t0
        patients, studies = http("GET", "/patients"), http("GET", "/studies")
        if len(patients) != 1 or len(studies) != 1:
            raise SystemExit(f"the results split the study: {len(patients)} patient(s), {len(studies)} stud(ies) in Orthanc")
        import pydicom
        from io import BytesIO

        ct_uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in ct.glob("*.dcm")}
        (seg_instance,) = http("GET", f"/series/{mods['SEG']}")["Instances"]
        seg = pydicom.dcmread(BytesIO(http("GET", f"/instances/{seg_instance}/file")), stop_before_pixels=True)
        referenced = {str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
        if referenced != ct_uids:
            raise SystemExit(f"the SEG references {len(referenced)} instance(s), the CT has {len(ct_uids)}; "
                             f"{len(ct_uids - referenced)} missing")
        instances = {m: len(http("GET", f"/series/{s}")["Instances"]) for m, s in mods.items()}
        # what the service kept: made from de-identified images (no patient ID), while Orthanc's copy has it
        kept = [pydicom.dcmread(f, stop_before_pixels=True) for f in (work / "service").rglob("*.dcm")]
        kept_ids = sorted({str(ds.get("PatientID", "")) for ds in kept if ds.get("Modality") == "SEG"})
        kept_studies = sorted({str(ds.StudyInstanceUID) for ds in kept if ds.get("Modality") == "SEG"})
        same_study_uid = kept_studies == [str(seg.StudyInstanceUID)]
        back_id = str(seg.PatientID)
        web = dicomweb_checks(work, study, mods) if dicomweb.is_file() else None
        print(json.dumps({"mode": mode, "dicomweb": web, "service_seg_patient_ids": kept_ids,
                          "service_saw_study_uid": same_study_uid, "pacs_seg_has_patient_id": bool(back_id),
                          "seconds_push_to_results_back": round(elapsed, 1), "seconds_orthanc_push": round(pushed, 1),
                          "result_series": sorted(mods), "instances_per_series": instances,
                          "patients": len(patients), "studies": len(studies), "seg_references": len(referenced),
                          "ct_instances": len(ct_uids)}))
        return 0
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=40)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in logs.values():
            f.close()


def dicomweb_checks(work: Path, study: str, mods: dict) -> dict:
    """Read the SEG back through DICOMweb (QIDO-RS, WADO-RS metadata) and store a copy of it by STOW-RS."""
    import pydicom
    from io import BytesIO
    from pydicom.uid import generate_uid

    study_uid = http("GET", f"/studies/{study}")["MainDicomTags"]["StudyInstanceUID"]
    found = http("GET", f"/dicom-web/studies/{study_uid}/series?Modality=SEG")
    (seg_series_uid,) = [item["0020000E"]["Value"][0] for item in found]
    meta = http("GET", f"/dicom-web/studies/{study_uid}/series/{seg_series_uid}/metadata")
    refs = sum(len(series.get("0008114A", {}).get("Value", [])) for series in meta[0]["00081115"]["Value"])
    # STOW-RS: a copy of the SEG (new series and instance UIDs) through coviax-client dicom-send
    (seg_instance,) = http("GET", f"/series/{mods['SEG']}")["Instances"]
    seg = pydicom.dcmread(BytesIO(http("GET", f"/instances/{seg_instance}/file")))
    seg.SeriesInstanceUID, seg.SOPInstanceUID = generate_uid(), generate_uid()
    seg.file_meta.MediaStorageSOPInstanceUID = seg.SOPInstanceUID
    (work / "stow").mkdir(exist_ok=True)
    seg.save_as(work / "stow" / "seg_copy.dcm")
    sent = subprocess.run([str(BIN / "coviax-client"), "dicom-send", "--stow-url", f"http://127.0.0.1:{HTTP}/dicom-web",
                           "--spool", str(work / "stow-spool"), str(work / "stow" / "seg_copy.dcm")],
                          capture_output=True, text=True, timeout=120)
    if sent.returncode != 0:
        raise SystemExit("dicom-send --stow-url failed: " + sent.stderr[-2000:])
    segs = http("GET", f"/dicom-web/studies/{study_uid}/series?Modality=SEG")
    return {"seg_references": refs, "seg_series_after_stow": len(segs), "studies_after_stow": len(http("GET", "/studies"))}


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:4]))
