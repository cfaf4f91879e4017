"""Listener pseudonymisation (coviax_client.pseudonym): PS3.15 Annex E actions per attribute class,
consistency, the protected secret and mapping, and re-identification of real SEG/SR/SC results."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from coviax_client.pseudonym import Pseudonymiser


@pytest.fixture()
def pseudo(tmp_path) -> Pseudonymiser:
    return Pseudonymiser(tmp_path / "secret", tmp_path / "map")


def _ct() -> pydicom.Dataset:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^John", "MRN-4711", "19600101"
    ds.AccessionNumber, ds.StudyDescription, ds.InstitutionName = "ACC99", "CT chest Doe", "St. Example"
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.42"
    ds.ReferencedImageSequence = [ref]
    ds.add_new(0x00091001, "LO", "private")
    return ds


def test_each_attribute_class_gets_its_action(pseudo):
    ds = _ct()
    original = _ct()
    uid_map: dict[str, str] = {}
    pseudo.pseudonymise(ds, uid_map)
    # D: dummies, consistent with the HMAC of the PatientID
    p = pseudo.patient_pseudonym("MRN-4711")
    assert ds.PatientID == "COVIAX-" + p and str(ds.PatientName) == "COVIAX^" + p
    # Z: emptied (type 2) / X: removed (type 3, free text, institution) / private tags removed
    assert ds.PatientBirthDate == "" and ds.AccessionNumber == "" and ds.StudyDate == ""
    assert "StudyDescription" not in ds and "InstitutionName" not in ds
    assert not any(el.tag.is_private for el in ds)
    # U: every non-DICOM UID replaced, consistently, in sequences and the file meta too
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        new, old = str(ds.data_element(keyword).value), str(original.data_element(keyword).value)
        assert new != old and new.startswith("2.25.") and len(new) <= 64 and uid_map[new] == old
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    inner = ds.ReferencedImageSequence[0]
    assert uid_map[inner.ReferencedSOPInstanceUID] == "1.2.826.0.1.3680043.8.498.42"
    # K: DICOM-defined UIDs, geometry and pixels kept
    assert ds.SOPClassUID == original.SOPClassUID and inner.ReferencedSOPClassUID == original.SOPClassUID
    assert ds.ImagePositionPatient == original.ImagePositionPatient and ds.PixelData == original.PixelData
    assert ds.PatientIdentityRemoved == "YES" and "pseudonymise" in ds.DeidentificationMethod
    assert len(ds.DeidentificationMethod) <= 64  # LO
    text = str(ds)
    for secret in ("Doe", "MRN-4711", "ACC99", "19600101", "Example", "private"):
        assert secret not in text, secret


def test_pseudonyms_are_consistent_and_keyed(pseudo, tmp_path):
    a, b = _ct(), _ct()
    pseudo.pseudonymise(a, {})
    pseudo.pseudonymise(b, {})
    assert a.PatientID == b.PatientID and a.StudyInstanceUID == b.StudyInstanceUID  # same patient, same study
    other = Pseudonymiser(tmp_path / "other-secret", tmp_path / "map2")
    c = _ct()
    other.pseudonymise(c, {})
    assert c.PatientID != a.PatientID and c.StudyInstanceUID != a.StudyInstanceUID  # another secret, other values


def test_secret_and_mapping_are_owner_only(pseudo, tmp_path):
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "map").stat().st_mode) == 0o700
    path = pseudo.save_mapping("series-1", {"2.25.1": "1.2.3"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and pseudo.load_mapping("series-1") == {"2.25.1": "1.2.3"}
    os.chmod(tmp_path / "secret", 0o644)
    with pytest.raises(ValueError, match="readable by others"):
        Pseudonymiser(tmp_path / "secret", tmp_path / "map")
    with pytest.raises(ValueError, match="readable by others"):  # issue 31 item 5: refused, nothing created
        Pseudonymiser(tmp_path / "secret", tmp_path / "never-made")
    assert not (tmp_path / "never-made").exists()
    with pytest.raises(ValueError, match="no pseudonym mapping"):
        pseudo.load_mapping("series-unknown")


def test_results_of_a_pseudonymised_series_map_back_to_the_original_study(pseudo, sample_volume, sample_dir, tmp_path):
    """The service analyses the pseudonymised copy; its SEG/SR/SC come back referencing the original instances."""
    from coviax.pipeline import SegmentOptions, run
    from coviax.io import read_scan

    originals = tmp_path / "incoming"
    shutil.copytree(sample_dir, originals)
    copy = tmp_path / "pseudonymised"
    pseudo.save_mapping("series-x", pseudo.copy_series(originals, copy))
    out = tmp_path / "out"
    run(read_scan(copy), out, SegmentOptions(lungs="classical", engine="threshold", outputs=("report", "seg", "sr", "sc")))
    results = [out / n for n in ("seg.dcm", "measurements_sr.dcm", "report_sc.dcm")]
    source = pydicom.dcmread(sorted(originals.glob("*.dcm"))[0], stop_before_pixels=True)
    seg = pydicom.dcmread(out / "seg.dcm", stop_before_pixels=True)
    assert seg.StudyInstanceUID != source.StudyInstanceUID and seg.PatientID.startswith("COVIAX-")
    assert pseudo.reidentify(results, "series-x", sorted(originals.glob("*.dcm"))[0]) == 3
    ct_uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in originals.glob("*.dcm")}
    seg = pydicom.dcmread(out / "seg.dcm", stop_before_pixels=True)
    assert {str(i.ReferencedSOPInstanceUID) for s in seg.ReferencedSeriesSequence
            for i in s.ReferencedInstanceSequence} == ct_uids
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    for path in results:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
        assert ds.PatientName == source.PatientName
        assert "PatientIdentityRemoved" not in ds and "LongitudinalTemporalInformationModified" not in ds
        assert "2.25." not in str(ds.get("ReferencedSeriesSequence", "")), path.name
    # the SR still points at the SEG it came with (a new instance, not in the mapping)
    sr = pydicom.dcmread(out / "measurements_sr.dcm")
    evidence = {str(i.ReferencedSOPInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    assert seg.SOPInstanceUID in evidence
    # the results still pass dciodvfy after the mapping back
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy:
        import subprocess

        for path in results:
            done = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
            lines = (done.stdout + done.stderr).splitlines()
            assert not [l for l in lines if l.startswith("Error")], path.name


def test_listener_submitter_uploads_the_pseudonymised_copy_and_reidentifies(pseudo, sample_dir, tmp_path):
    from coviax.pipeline import SegmentOptions, run
    from coviax_client.submit import sdk_submitter

    class FakeResult:
        job_id = "job-1"
        ratios_pct = {"all": 1.0}

    class FakeClient:
        """Runs the pipeline on what would be uploaded, as the service would."""

        def segment(self, folder, idempotency_key, deidentify, **options):
            first = pydicom.dcmread(sorted(Path(folder).glob("*.dcm"))[0], stop_before_pixels=True)
            assert first.PatientID.startswith("COVIAX-") and not deidentify
            self.uploaded = Path(folder)
            self.keys = (idempotency_key, options["client_ref"])
            self.out = tmp_path / "service"
            run(Path(folder), self.out, SegmentOptions(lungs="classical", engine="threshold",
                                                      outputs=("report", "seg", "sr", "sc")))
            return FakeResult()

        def download_all(self, result, out):
            for name in ("seg.dcm", "measurements_sr.dcm", "report_sc.dcm", "report.json"):
                shutil.copy(self.out / name, Path(out) / name)

    incoming = tmp_path / "incoming"
    shutil.copytree(sample_dir, incoming)
    out = tmp_path / "out"
    out.mkdir()
    client = FakeClient()
    sdk_submitter(client, pseudonymiser=pseudo)(incoming, "series-x", out, "e" * 64)
    assert not client.uploaded.exists()  # the pseudonymised copy is gone
    # issue 31 item 1: nothing the service gets is an unkeyed hash of original UIDs
    idempotency_key, client_ref = client.keys
    assert "series-x" not in idempotency_key and client_ref != "series-x" and "e" * 16 not in idempotency_key
    assert client_ref == "series-" + pseudo.reference("series", "series-x")[:16]
    other = Pseudonymiser(tmp_path / "other-secret", tmp_path / "map2")
    assert other.reference("series", "series-x") != pseudo.reference("series", "series-x")  # keyed
    source = pydicom.dcmread(sorted(incoming.glob("*.dcm"))[0], stop_before_pixels=True)
    for name in ("seg.dcm", "measurements_sr.dcm", "report_sc.dcm"):
        ds = pydicom.dcmread(out / name, stop_before_pixels=True)
        assert ds.PatientID == source.PatientID and ds.StudyInstanceUID == source.StudyInstanceUID, name
    import json

    assert json.loads((tmp_path / "service" / "report.json").read_text())["input"]["series_uid"].startswith("2.25.")
    assert json.loads((out / "report.json").read_text())["input"]["series_uid"] == source.SeriesInstanceUID
    with pytest.raises(ValueError, match="not both"):
        sdk_submitter(client, deidentify=True, pseudonymiser=pseudo)
    from coviax_client.cli import main

    assert main(["dicom-listener", "--server", "127.0.0.1:9", "--out", str(tmp_path / "o"), "--deidentify",
                 "--pseudonymise", str(tmp_path / "s")]) == 2
