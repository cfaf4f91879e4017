"""Hybrid phantoms (coviax_research.phantom) and the ``coviax phantom`` command, on the real bundled chest CT."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from coviax.cli import main
from coviax.labels import Label
from coviax.lungs import segment_lungs
from coviax_research.phantom import (
    EVAL_SEEDS,
    SEVERITIES,
    SEVERITY_RANGES,
    TRAIN_SEED_RANGE,
    Phantom,
    make_phantom,
)
from coviax_research.phantom_layout import downsample_volume
from coviax_research.phantom_write import write_phantom
from coviax.quantify import quantify
from coviax.io import read_scan


@pytest.fixture(scope="module")
def small_source(sample_volume):
    """The real CT down-sampled 4x in-plane (128 x 128, 3.4 mm pixels): fast phantoms."""
    return downsample_volume(sample_volume, 4)


@pytest.fixture(scope="module")
def small_lungs(small_source):
    return segment_lungs(small_source, "classical")


@pytest.fixture(scope="module")
def full_moderate(sample_volume, sample_lungs) -> Phantom:
    return make_phantom(sample_volume, seed=1003, severity="moderate", lungs=sample_lungs)


def lesion_fraction(p: Phantom) -> float:
    return float(np.count_nonzero(p.labels >= Label.GGO) / np.count_nonzero(p.lungs.cavity))


def test_seed_split_is_disjoint():
    assert not set(EVAL_SEEDS) & set(TRAIN_SEED_RANGE)
    assert EVAL_SEEDS[0] == 1000 and len(EVAL_SEEDS) == 100 and TRAIN_SEED_RANGE.stop <= 1000


def test_deterministic_per_seed(small_source, small_lungs):
    a = make_phantom(small_source, seed=7, severity="moderate", noise_sigma_hu=20, lungs=small_lungs)
    b = make_phantom(small_source, seed=7, severity="moderate", noise_sigma_hu=20, lungs=small_lungs)
    c = make_phantom(small_source, seed=8, severity="moderate", noise_sigma_hu=20, lungs=small_lungs)
    assert np.array_equal(a.volume.hu, b.volume.hu) and np.array_equal(a.labels, b.labels)
    assert a.truth == b.truth
    assert not np.array_equal(a.labels, c.labels)
    assert not np.array_equal(a.volume.hu, c.volume.hu)
    # noise is a separate random stream: the same seed without noise has the same lesions
    quiet = make_phantom(small_source, seed=7, severity="moderate", lungs=small_lungs)
    assert np.array_equal(quiet.labels, a.labels)
    assert not np.array_equal(quiet.volume.hu, a.volume.hu)


def test_lesions_only_inside_the_true_lung(small_source, small_lungs):
    p = make_phantom(small_source, seed=11, severity="severe", lungs=small_lungs)
    cavity = p.lungs.cavity
    assert np.array_equal(cavity, small_lungs.cavity)
    assert not (p.labels[~cavity]).any()
    assert (p.labels[cavity] > 0).all()
    # outside the lung the CT is the source, voxel for voxel (no noise asked)
    assert np.array_equal(p.volume.hu[~cavity], small_source.hu[~cavity])
    assert (p.labels >= Label.GGO).any()


def test_truth_matches_a_recount_of_the_labels(full_moderate, sample_volume):
    p = full_moderate
    t = p.truth
    voxel_ml = sample_volume.voxel_volume_ml
    lung = np.count_nonzero(p.lungs.cavity)
    ggo = np.count_nonzero(p.labels == Label.GGO)
    cons = np.count_nonzero(p.labels == Label.CONSOLIDATION)
    assert t["ratios_pct"]["all"] == pytest.approx(100 * (ggo + cons) / lung, abs=1e-5)
    assert t["ratios_pct"]["ggo"] == pytest.approx(100 * ggo / lung, abs=1e-5)
    assert t["ratios_pct"]["consolidation"] == pytest.approx(100 * cons / lung, abs=1e-5)
    assert t["volumes_ml"]["ggo"] == pytest.approx(ggo * voxel_ml, abs=1e-3)
    assert t["volumes_ml"]["consolidation"] == pytest.approx(cons * voxel_ml, abs=1e-3)
    assert t["lung_ml"]["total"] == pytest.approx(lung * voxel_ml, abs=1e-3)
    q = quantify(p.labels, p.lungs.labels, p.volume)
    assert q.ratios_pct["all"] == pytest.approx(t["ratios_pct"]["all"], abs=1e-3)
    assert q.lung_ml["left"] == pytest.approx(t["lung_ml"]["left"], abs=1e-2)
    assert t["seed"] == 1003 and t["severity"] == "moderate" and t["generator_version"]
    assert json.loads(json.dumps(t)) == t  # JSON-ready


@pytest.mark.parametrize("seed", [3, 1004])
def test_severity_ordering(small_source, small_lungs, seed):
    fractions = [lesion_fraction(make_phantom(small_source, seed=seed, severity=s, lungs=small_lungs))
                 for s in SEVERITIES]
    assert fractions[0] == 0.0
    assert all(a < b for a, b in zip(fractions, fractions[1:])), fractions
    assert fractions[-1] > 0.5
    for severity, f in zip(SEVERITIES[1:], fractions[1:]):
        low, high = SEVERITY_RANGES[severity]
        assert low <= f < high, (severity, f)


def test_lesion_hu_bands_and_vessels_stay_visible(full_moderate, sample_volume, sample_lungs):
    p = full_moderate
    hu = p.volume.hu
    ggo, cons = p.labels == Label.GGO, p.labels == Label.CONSOLIDATION
    assert cons.any()
    assert -750 < np.median(hu[ggo]) < -300
    assert -100 < np.median(hu[cons]) < 60
    assert np.percentile(hu[ggo], 5) > -800 and np.percentile(hu[ggo], 95) < -250
    # dense source vessels kept their HU and label where lesions were inserted
    vessel = p.labels == Label.VESSEL
    assert np.array_equal(hu[vessel] >= sample_volume.hu[vessel], np.ones(vessel.sum(), bool))
    assert (hu[vessel] == sample_volume.hu[vessel]).mean() > 0.95
    noisy = make_phantom(sample_volume, seed=1003, severity="moderate", noise_sigma_hu=25, lungs=sample_lungs)
    assert np.array_equal(noisy.labels, p.labels)
    assert -750 < np.median(noisy.volume.hu[ggo]) < -300
    assert -100 < np.median(noisy.volume.hu[cons]) < 60
    body = (sample_volume.hu > -200) & (sample_volume.hu < 200) & ~sample_lungs.cavity
    diff = noisy.volume.hu[body].astype(float) - p.volume.hu[body]
    assert np.std(diff) == pytest.approx(25, rel=0.1)


def test_none_inserts_nothing(small_source, small_lungs):
    p = make_phantom(small_source, seed=1, severity="none", lungs=small_lungs)
    assert np.array_equal(p.volume.hu, small_source.hu)
    assert p.truth["ratios_pct"]["all"] == 0.0
    dense = (small_source.hu > -500) & small_lungs.cavity
    assert np.array_equal(p.labels == Label.VESSEL, dense)


def test_written_dicom_reads_back_exactly_without_source_identifiers(full_moderate, sample_dir, sample_volume,
                                                                        tmp_path):
    import pydicom

    paths = write_phantom(full_moderate, tmp_path / "ph")
    back = read_scan(paths["dicom"])
    v = full_moderate.volume
    assert np.array_equal(back.hu, v.hu)
    assert back.spacing_zyx == pytest.approx(v.spacing_zyx)
    assert back.origin_xyz == pytest.approx(v.origin_xyz)
    assert np.allclose(back.direction, v.direction)
    files = sorted(paths["dicom"].iterdir())
    assert len(files) == v.shape[0]
    ds = pydicom.dcmread(files[0])
    src = sample_volume.source_headers[0]
    assert str(ds.PatientName) == "COVIAX^PHANTOM" and ds.PatientID == "PHANTOM-1003"
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.RescaleIntercept == -1024 and ds.RescaleSlope == 1 and ds.PixelRepresentation == 0
    for uid in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID"):
        assert getattr(ds, uid) != getattr(src, uid, None)
    secrets = {str(src.PatientName).encode(), str(src.PatientID).encode(), str(src.StudyInstanceUID).encode(),
               str(src.SeriesInstanceUID).encode()}
    secrets.discard(b"")
    for f in [p for p in (tmp_path / "ph").rglob("*") if p.is_file()]:
        data = f.read_bytes()
        if f.name.endswith(".gz"):
            data += gzip.decompress(data)
        for s in secrets:
            assert s not in data, (f, s)
    import SimpleITK as sitk  # labels are not HU: read_scan would refuse them

    labels_back = sitk.GetArrayFromImage(sitk.ReadImage(str(paths["labels"])))
    assert np.array_equal(labels_back, full_moderate.labels)
    assert np.array_equal(read_scan(paths["image"]).hu, v.hu)
    assert json.loads(paths["truth"].read_text())["ratios_pct"] == full_moderate.truth["ratios_pct"]


def test_thin_slice_resampling(small_source, small_lungs):
    thin = make_phantom(small_source, seed=1005, severity="moderate", slice_thickness_mm=1.25, lungs=small_lungs)
    n = small_source.shape[0]
    assert thin.volume.shape == ((n - 1) * 4 + 1,) + small_source.shape[1:]
    assert thin.volume.spacing_zyx == pytest.approx((1.25,) + small_source.spacing_zyx[1:])
    assert thin.volume.origin_xyz == pytest.approx(small_source.origin_xyz)
    assert thin.labels.shape == thin.volume.shape == thin.lungs.labels.shape
    # source slices reappear every 4th thin slice (outside the lungs, no lesions there)
    outside = ~thin.lungs.cavity[::4]
    assert np.array_equal(thin.volume.hu[::4][outside], small_source.hu[outside])
    assert np.array_equal(thin.lungs.labels[::4], small_lungs.labels)
    # the lesion layout lives in patient space: the 5 mm phantom of the same seed has about the same ratio
    thick = make_phantom(small_source, seed=1005, severity="moderate", lungs=small_lungs)
    assert thin.truth["ratios_pct"]["all"] == pytest.approx(thick.truth["ratios_pct"]["all"], abs=2.0)
    assert thin.truth["slice_thickness_mm"] == 1.25
    assert thin.truth["lung_ml"]["total"] == pytest.approx(thick.truth["lung_ml"]["total"], rel=0.03)


def test_bad_arguments_are_user_errors(small_source, small_lungs):
    from coviax.errors import OptionError

    with pytest.raises(OptionError, match="severity"):
        make_phantom(small_source, seed=1, severity="huge", lungs=small_lungs)
    with pytest.raises(OptionError, match="seed"):
        make_phantom(small_source, seed=-1, severity="mild", lungs=small_lungs)
    with pytest.raises(OptionError, match="thickness"):
        make_phantom(small_source, seed=1, severity="mild", slice_thickness_mm=0, lungs=small_lungs)


def test_phantom_cli(small_source, tmp_path, capsys):
    src = tmp_path / "small.nii.gz"
    import SimpleITK as sitk

    sitk.WriteImage(small_source.to_sitk(), str(src))
    out = tmp_path / "out"
    rc = main(["phantom", str(src), "--out", str(out), "--seed", "12", "--severity", "mild", "--noise-sigma", "10"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "VRall" in printed
    truth = json.loads((out / "truth.json").read_text())
    assert truth["severity"] == "mild" and truth["seed"] == 12 and truth["noise_sigma_hu"] == 10
    assert read_scan(out / "dicom").shape == small_source.shape
    assert main(["phantom", str(src), "--out", str(out), "--seed", "-3", "--severity", "mild"]) == 2
