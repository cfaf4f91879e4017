"""The one-page report (HTML, PDF), the DICOM SR and Secondary Capture, end to end on the real chest CT.

Headless Chromium opens report.html offline; poppler renders report.pdf. Both
binaries come from the Makefile's setup step; a test that needs one skips, with
the reason, only where it is truly absent.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import warnings

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

import coviax
from coviax.export.dicom import sr as dicom_sr
from coviax.export.report import build_report
from coviax.lesions import LesionLabels
from coviax.lungs import LungMask
from coviax.pipeline import OUTPUTS, SegmentOptions, run, write_outputs
from coviax.quantify import quantify
from coviax.io import Volume

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
PDFTOPPM = shutil.which("pdftoppm")
PDFTOTEXT = shutil.which("pdftotext")

NEW_ARTIFACTS = {"mesh_glb", "mesh_stl_lung", "mesh_stl_ggo", "mesh_stl_consolidation", "render_3d",
                 "report_html", "report_pdf", "dicom_sr", "dicom_sc"}


@pytest.fixture(scope="module")
def patient(sample_volume):
    """The source's patient name and ID: they must not leave the DICOM files."""
    ds = sample_volume.source_headers[0]
    return [str(ds.PatientName), str(ds.PatientID)]


@pytest.fixture(scope="module")
def result(sample_volume, tmp_path_factory):
    """One pipeline run with the default outputs; every warning and log record is kept."""
    out = tmp_path_factory.mktemp("pages")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            res = run(sample_volume, out, SegmentOptions(lungs="classical", engine="kmeans", study_label="demo-study 7"))
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in records]
    return res, out, messages


def test_default_outputs_include_the_new_ones(result):
    res, out, _ = result
    assert {"mesh", "html", "pdf", "sr", "sc"} <= set(OUTPUTS) == set(SegmentOptions().outputs)
    assert NEW_ARTIFACTS <= set(res.report["artifacts"])
    for name in NEW_ARTIFACTS:
        assert res.artifacts[name].is_file() and res.artifacts[name].stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    assert report["scores"]["six_zone"]["max"] == 24 and "lobe_score" in report["scores"]
    assert report["scores"]["opacity_pct"]["overall"] == pytest.approx(report["ratios_pct"]["all"], abs=1e-3)


def test_no_patient_identifier_in_pages_logs_or_warnings(result, patient, capsys):
    res, out, messages = result
    texts = [(out / "report.html").read_text(), (out / "report.json").read_text(), *messages,
             capsys.readouterr().out, capsys.readouterr().err]
    if PDFTOTEXT:
        texts.append(subprocess.run([PDFTOTEXT, str(out / "report.pdf"), "-"], capture_output=True, text=True,
                                    timeout=60).stdout)
    for ident in patient:
        assert not any(ident in t for t in texts), "a patient identifier reached a page, a log or a warning"
    # the DICOM objects do carry the patient: they join the patient's study
    assert str(pydicom.dcmread(out / "report_sc.dcm", stop_before_pixels=True).PatientID) == patient[1]


def test_html_is_self_contained(result):
    _, out, _ = result
    text = (out / "report.html").read_text()
    assert "http://" not in text and "https://" not in text and "url(" not in text and "href" not in text
    sources = re.findall(r"""\bsrc\s*=\s*["']([^"']*)""", text)
    assert len(sources) == 7 and all(s.startswith("data:image/png;base64,") for s in sources)  # 6 slices + render
    assert "default-src 'none'" in text  # Content-Security-Policy: nothing may be fetched
    assert coviax.RESEARCH_USE_NOTICE in text


def _chromium(*args, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium-profile'}", *args],
        capture_output=True, text=True, timeout=90,
    )


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (make setup installs it)")
def test_html_in_headless_chromium(result, tmp_path):
    res, out, _ = result
    url = (out / "report.html").resolve().as_uri()
    shot = tmp_path / "shot.png"
    _chromium(f"--screenshot={shot}", "--window-size=1200,1600", url, tmp_path=tmp_path)
    from PIL import Image

    image = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert image.shape[:2] == (1600, 1200)
    non_white = (image < 235).any(axis=2).mean()
    assert image.std() > 30 and non_white > 0.15, "the screenshot is (nearly) blank"
    # the overlay colours of the slices and the render made it to the screen (images decoded)
    assert ((image[..., 0] > 200) & (image[..., 1] > 170) & (image[..., 2] < 80)).sum() > 200

    dom = _chromium("--dump-dom", url, tmp_path=tmp_path).stdout
    report = res.report
    assert f"{report['ratios_pct']['all']:.2f} % of lung" in dom
    assert f"{report['lungs']['volume_ml']['total'] / 1000:.2f} L" in dom
    six = report["scores"]["six_zone"]
    assert re.search(rf'id="six-zone">{six["total"]} / 24<', dom)
    assert re.search(rf'id="opacity">{report["scores"]["opacity_pct"]["overall"]:.2f} %', dom)
    assert "demo-study 7" in dom and "not a medical device" in dom
    assert "Youden" in dom and "research thresholds" in dom
    assert "classical" in dom and "kmeans" in dom and coviax.__version__ in dom


@pytest.mark.skipif(PDFTOPPM is None, reason="pdftoppm (poppler-utils) is not installed (make setup installs it)")
def test_pdf_is_one_non_blank_page(result, tmp_path):
    res, out, _ = result
    pdf = out / "report.pdf"
    assert pdf.read_bytes().startswith(b"%PDF")
    subprocess.run([PDFTOPPM, "-r", "60", "-png", str(pdf), str(tmp_path / "page")], check=True, timeout=60)
    pages = sorted(tmp_path.glob("page*.png"))
    assert len(pages) == 1
    from PIL import Image

    image = np.asarray(Image.open(pages[0]).convert("RGB")).astype(int)
    assert image.shape[0] > image.shape[1]  # portrait
    assert image.std() > 30 and (image < 235).any(axis=2).mean() > 0.1
    if PDFTOTEXT:
        text = subprocess.run([PDFTOTEXT, str(pdf), "-"], capture_output=True, text=True, timeout=60).stdout
        assert f"{res.report['ratios_pct']['all']:.2f} % of lung" in text
        assert "not a medical device" in text and "Six-zone score" in text and "demo-study 7" in text


def test_sr_measurements_reference_the_seg(result, sample_volume):
    res, out, _ = result
    report = res.report
    seg = pydicom.dcmread(out / "seg.dcm", stop_before_pixels=True)
    sr = hd.sr.srread(out / "measurements_sr.dcm")
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == sample_volume.source_headers[0].StudyInstanceUID == seg.StudyInstanceUID
    assert sr.SeriesInstanceUID not in (seg.SeriesInstanceUID, sample_volume.series_uid)
    content = sr.content
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"  # TID 1500 Imaging Measurement Report
    segments = {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg.SegmentSequence}
    expected_ml = dicom_sr.segment_volumes_ml(report)
    by_label = {name: code for code, name, _, _ in dicom_sr.SEGMENTS}
    groups = content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(segments)
    for group in groups:
        ref = group.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        (number,) = ref.referenced_segment_numbers
        label = segments[number]
        (volume,) = group.get_measurements(name=codes.SCT.Volume)
        assert volume.value == pytest.approx(expected_ml[by_label[label]], abs=1e-3)
        assert volume.unit.value == "mL"
        if label == "Ground-glass opacity":
            assert group.get_measurements(name=dicom_sr.VR_GGO)[0].value == pytest.approx(report["ratios_pct"]["ggo"])
            assert volume.value == pytest.approx(report["lesions"]["volume_ml"]["ggo"])
        if label == "Consolidation":
            assert group.get_measurements(name=dicom_sr.VR_CS)[0].value == pytest.approx(report["ratios_pct"]["consolidation"])
    (whole,) = content.get_image_measurement_groups()
    assert whole.source_images[0].referenced_sop_instance_uid == seg.SOPInstanceUID
    volumes = whole.get_measurements(name=codes.SCT.Volume)
    lung = report["lungs"]["volume_ml"]
    sided = {m.finding_sites[0].laterality.value if m.finding_sites else None: m.value for m in volumes}
    assert sided == pytest.approx({None: lung["total"], "24028007": lung["right"], "7771000": lung["left"]})
    assert whole.get_measurements(name=dicom_sr.VR_ALL)[0].value == pytest.approx(report["ratios_pct"]["all"])
    assert whole.get_measurements(name=dicom_sr.SIX_ZONE)[0].value == report["scores"]["six_zone"]["total"]
    assert not whole.get_measurements(name=dicom_sr.LOBE_SCORE)  # classical lungs: no lobes, no lobe score
    evidence = {ev[2] for ev in sr.get_evidence()}  # (study, series, instance, SOP class)
    assert seg.SOPInstanceUID in evidence


def test_secondary_capture_joins_the_study(result, sample_volume):
    _, out, _ = result
    sc = pydicom.dcmread(out / "report_sc.dcm")
    source = sample_volume.source_headers[0]
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert sc.PhotometricInterpretation == "RGB" and sc.BurnedInAnnotation == "NO"
    assert sc.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"  # RLE Lossless (written with GDCM installed)
    pixels = sc.pixel_array
    assert pixels.shape == (1169, 827, 3) and pixels.dtype == np.uint8
    assert pixels.std() > 30 and (pixels < 235).any(axis=2).mean() > 0.1


def test_non_dicom_input_gets_pages_but_no_dicom_objects(tmp_path):
    # a small synthetic scan read from "NIfTI": no source headers, so no SEG, SR or SC
    shape = (12, 48, 64)
    hu = np.full(shape, -850, np.int16)
    lungs = np.zeros(shape, np.uint8)
    lungs[1:11, 8:40, 4:30] = 1
    lungs[1:11, 8:40, 34:60] = 2
    labels = np.where(lungs > 0, 1, 0).astype(np.uint8)
    labels[4:8, 16:30, 40:54] = 3
    hu[labels == 3] = -500
    volume = Volume(hu=hu, spacing_zyx=(5.0, 0.8, 0.8), source_format="nii.gz")
    lesions = LesionLabels(labels, "kmeans", "test")
    # lobes (LTRCLobes codes): left lung upper (1) / lower (2) halves, right lung in thirds (3, 4, 5)
    lobes = np.zeros(shape, np.uint8)
    lobes[6:11][lungs[6:11] == 2] = 1
    lobes[1:6][lungs[1:6] == 2] = 2
    lobes[8:11][lungs[8:11] == 1] = 3
    lobes[4:8][lungs[4:8] == 1] = 4
    lobes[1:4][lungs[1:4] == 1] = 5
    lung_mask = LungMask(lungs, "lungmask:LTRCLobes", lobes=lobes)
    report = build_report(volume, lung_mask, lesions, quantify(labels, lungs, volume), {}, "synthetic")
    lobe = report["scores"]["lobe_score"]
    assert lobe["computed"] and lobe["lobes"]["left_upper"]["score"] > 0 and lobe["lobes"]["right_upper"]["score"] == 0
    artifacts = write_outputs(tmp_path, volume, lesions, report, OUTPUTS)
    assert {"report_html", "report_pdf", "mesh_glb", "render_3d"} <= set(artifacts)
    page = artifacts["report_html"].read_text()
    assert f'id="lobe-score">{lobe["total"]} / 25<' in page and "left upper" in page
    assert not {"dicom_seg", "dicom_sr", "dicom_sc"} & set(artifacts)
    notes = " ".join(report["input"]["warnings"])
    assert "no DICOM SEG" in notes and "no DICOM SR" in notes and "no DICOM Secondary Capture" in notes
