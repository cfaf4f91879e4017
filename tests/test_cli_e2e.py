"""End to end through `coviax segment` on the real chest CT."""

from __future__ import annotations

import json
import shutil

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch

from coviax.cli import main
from coviax.lesions.unet_model import UNet2D, UNetConfig, save_checkpoint


@pytest.fixture(scope="module")
def kmeans_run(sample_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    code = main(["segment", str(sample_dir), "--out", str(out), "--lungs", "classical", "--engine", "kmeans"])
    return code, out


def test_report_is_plausible(kmeans_run, capsys):
    code, out = kmeans_run
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "coviax.report/1"
    assert "not a medical device" in report["notice"]
    assert report["input"]["slices"] == 64
    assert report["input"]["spacing_mm"] == pytest.approx([5.0, 0.841797, 0.841797], abs=1e-5)
    assert 2000 <= report["lungs"]["volume_ml"]["total"] <= 8000
    assert report["lungs"]["method"] == "classical"
    assert report["lesions"]["engine"] == "kmeans"
    for key in ("all", "ggo", "consolidation"):
        assert 0 <= report["ratios_pct"][key] <= 100
    assert report["ratios_pct"]["all"] == pytest.approx(
        report["ratios_pct"]["ggo"] + report["ratios_pct"]["consolidation"], abs=1e-3)
    blobs = report["blobs"]
    assert blobs and [b["rank"] for b in blobs] == list(range(1, len(blobs) + 1))
    assert all(blobs[i]["volume_ml"] >= blobs[i + 1]["volume_ml"] for i in range(len(blobs) - 1))
    assert set(report["timings_s"]) >= {"read", "lungs", "lesions", "quantities", "exports", "total"}
    assert set(report["artifacts"]) >= {"report", "labels_nifti", "dicom_seg", "montage", "report_html", "report_pdf", "dicom_sr", "dicom_sc", "render_3d"}
    # no patient identifier of the source leaks into the report
    text = (out / "report.json").read_text()
    assert "Lung_Dx" not in text


def test_nifti_matches_the_input_geometry(kmeans_run, sample_volume):
    _, out = kmeans_run
    image = sitk.ReadImage(str(out / "labels.nii.gz"))
    assert image.GetSize() == (512, 512, 64)
    assert image.GetSpacing() == pytest.approx(sample_volume.spacing_zyx[::-1], abs=1e-5)
    assert image.GetOrigin() == pytest.approx(sample_volume.origin_xyz, abs=1e-3)
    assert np.allclose(np.reshape(image.GetDirection(), (3, 3)), sample_volume.direction)
    labels = sitk.GetArrayFromImage(image)
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 4} and (labels > 0).any()


def test_dicom_seg_reads_back_and_references_every_slice(kmeans_run, sample_dir):
    _, out = kmeans_run
    seg = hd.seg.segread(out / "seg.dcm")
    source_uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in sample_dir.iterdir()}
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    assert referenced == source_uids and len(referenced) == 64
    labels = {seg.get_segment_description(i).segment_label for i in seg.segment_numbers}
    assert {"Healthy lung", "Ground-glass opacity"} <= labels
    # the SEG's lung segment has as many voxels as the NIfTI's healthy-lung label
    nifti = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labels.nii.gz")))
    number = next(i for i in seg.segment_numbers if seg.get_segment_description(i).segment_label == "Healthy lung")
    volume = seg.get_volume(segment_numbers=[number], combine_segments=False)
    assert int(volume.array.sum()) == int((nifti == 1).sum())


def test_montage_png(kmeans_run):
    _, out = kmeans_run
    from PIL import Image

    image = np.asarray(Image.open(out / "montage.png").convert("RGB"))
    assert image.shape[0] > 200 and image.std() > 10


def test_stdout_table(sample_dir, tmp_path, capsys):
    # a NIfTI input: no SEG, and the report says so
    from coviax.io import read_scan

    nifti = tmp_path / "scan.nii.gz"
    sitk.WriteImage(read_scan(sample_dir).to_sitk(), str(nifti))
    code = main(["segment", str(nifti), "--out", str(tmp_path / "o"), "--lungs", "classical", "--engine", "threshold"])
    assert code == 0
    printed = capsys.readouterr()
    assert "VRall (%)" in printed.out and "Research use only" in printed.out
    assert "lungs done in" in printed.err  # plain log lines when not a terminal
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert "no DICOM SEG written" in " ".join(report["input"]["warnings"])
    assert not (tmp_path / "o" / "seg.dcm").exists()


def test_unet_engine_end_to_end(sample_dir, tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "unet.pt"
    save_checkpoint(UNet2D(UNetConfig(depth=3, width=8, input_size=128)), weights, meta={"name": "random"})
    out = tmp_path / "o"
    code = main(["segment", str(sample_dir), "--out", str(out), "--lungs", "classical", "--engine", "unet",
                 "--weights", str(weights)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["lesions"]["model"].startswith("random@sha256:")


def test_bad_input_exits_2_with_the_file_named(series_copy, tmp_path, capsys):
    victim = sorted(series_copy.iterdir())[12]
    ds = pydicom.dcmread(victim)
    del ds.RescaleIntercept
    ds.save_as(victim)
    code = main(["segment", str(series_copy), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "RescaleIntercept (0028,1052)" in err and victim.name in err
    assert "Traceback" not in err


def test_missing_weights_exit_2(sample_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("COVIAX_WEIGHTS", raising=False)
    code = main(["segment", str(sample_dir), "--out", str(tmp_path / "o"), "--engine", "unet",
                 "--weights", str(tmp_path / "absent.pt")])
    assert code == 2
    assert "absent.pt" in capsys.readouterr().err
