"""Reading real and deliberately broken CT series: each fault gets its own clear error."""

from __future__ import annotations

import shutil
import zipfile

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless, generate_uid

from coviax.errors import GeometryError, NotCTError, PixelDataError, ScanError, UnsafeArchiveError
from coviax.scan import read_scan


def _files(folder):
    return sorted(p for p in folder.rglob("*.dcm"))


def _lowest_slices(folder, n=3):
    """The ``n`` files lowest along z: re-encoding a few slices is enough (all 64 would only slow the tests)."""
    return sorted(_files(folder), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))[:n]


def test_real_series_geometry_and_hu(sample_volume):
    v = sample_volume
    assert v.shape == (64, 512, 512)
    assert v.hu.dtype == np.int16
    assert v.spacing_zyx == pytest.approx((5.0, 0.841796875, 0.841796875))
    assert v.series_uid and len(v.source_headers) == 64
    # air outside the body and dense bone are both present, in HU
    assert v.hu.min() == -1024 and v.hu.max() > 1000
    # slices are sorted along the normal: positions increase by the spacing
    z = [float(h.ImagePositionPatient[2]) for h in v.source_headers]
    assert np.allclose(np.diff(z), 5.0)
    # the patient position of voxel (0,0,0) is the first slice's ImagePositionPatient
    assert v.index_to_patient((0, 0, 0)) == pytest.approx([float(x) for x in v.source_headers[0].ImagePositionPatient])


def test_shuffled_file_names_give_the_same_volume(series_copy, sample_volume, tmp_path):
    files = _files(series_copy)
    rng = np.random.default_rng(1)
    names = [f"img{i:04d}.dcm" for i in rng.permutation(len(files))]
    shuffled = tmp_path / "shuffled" / "deep" / "er"
    shuffled.mkdir(parents=True)
    for f, name in zip(files, names):
        shutil.move(f, shuffled / name)
    v = read_scan(tmp_path / "shuffled")
    assert np.array_equal(v.hu, sample_volume.hu)


def test_missing_slice(series_copy):
    files = _files(series_copy)
    files[30].unlink()
    with pytest.raises(GeometryError, match=r"missing slice: a gap of 10.00 mm .*1 slice"):
        read_scan(series_copy)


def test_duplicate_slice_position(series_copy):
    files = _files(series_copy)
    ds = pydicom.dcmread(files[10])
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(series_copy / "zz_duplicate.dcm")
    with pytest.raises(GeometryError, match="duplicate slice position.*zz_duplicate.dcm|duplicate slice position"):
        read_scan(series_copy)


def test_missing_rescale_tags(series_copy):
    f = _files(series_copy)[5]
    ds = pydicom.dcmread(f)
    del ds.RescaleSlope
    ds.save_as(f)
    with pytest.raises(ScanError, match=r"missing RescaleSlope \(0028,1053\)"):
        read_scan(series_copy)


def test_modality_mr_is_not_ct(series_copy):
    for f in _files(series_copy):
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f)
    with pytest.raises(NotCTError, match=r"Modality \(0008,0060\) is 'MR'"):
        read_scan(series_copy)


def test_truncated_file_is_named(series_copy):
    f = _files(series_copy)[20]
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ScanError, match=f.name):
        read_scan(series_copy)


def test_no_pixel_data(series_copy):
    f = _files(series_copy)[3]
    ds = pydicom.dcmread(f)
    del ds.PixelData
    ds.save_as(f)
    with pytest.raises(PixelDataError, match=r"no pixel data \(7FE0,0010\)"):
        read_scan(series_copy)


def test_mixed_orientations(series_copy):
    f = _files(series_copy)[7]
    ds = pydicom.dcmread(f)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.8, -0.6]
    ds.save_as(f)
    with pytest.raises(GeometryError, match="mixed orientations"):
        read_scan(series_copy)


def test_values_not_plausibly_hu(series_copy):
    for f in _files(series_copy):
        ds = pydicom.dcmread(f)
        ds.RescaleIntercept = 0
        ds.save_as(f)
    with pytest.raises(ScanError, match="not plausibly Hounsfield units"):
        read_scan(series_copy)


def test_single_slice_is_not_a_volume():
    with pytest.raises(GeometryError, match="single DICOM slice"):
        read_scan(get_testdata_file("CT_small.dcm"))


def test_single_slice_folder(tmp_path):
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "one.dcm")
    with pytest.raises(GeometryError, match="single slice"):
        read_scan(tmp_path)


def test_empty_folder(tmp_path):
    with pytest.raises(ScanError, match="the folder is empty"):
        read_scan(tmp_path)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ScanError, match="no DICOM files found among 1 files"):
        read_scan(tmp_path)


def test_random_bytes_with_dicom_marker_are_corrupt(series_copy):
    bad = series_copy / "broken.dcm"
    bad.write_bytes(b"\0" * 128 + b"DICM" + np.random.default_rng(0).bytes(500))
    with pytest.raises(ScanError, match="broken.dcm"):
        read_scan(series_copy)


def test_zip_round_trip(sample_dir, sample_volume, tmp_path):
    archive = tmp_path / "scan.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(sample_dir.iterdir()):
            zf.write(f, f"study/series/{f.name}")
    v = read_scan(archive)
    assert np.array_equal(v.hu, sample_volume.hu)


def test_zip_path_traversal_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("../../etc/evil.dcm", b"x")
    with pytest.raises(UnsafeArchiveError, match="outside the extraction folder"):
        read_scan(archive)
    assert not (tmp_path.parent / "etc" / "evil.dcm").exists()


def test_zip_bomb_is_refused(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.dcm", b"\0" * (64 * 2**20))
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):
        read_scan(archive)


def test_decoder_choice_puts_gdcm_last():
    from coviax.scan import decoding_plugin

    assert decoding_plugin(JPEG2000Lossless) == "pylibjpeg"
    assert decoding_plugin(JPEGLSLossless) == "pylibjpeg"
    assert decoding_plugin(RLELossless) == "pylibjpeg"
    assert decoding_plugin(pydicom.uid.ExplicitVRLittleEndian) == ""
    assert decoding_plugin(pydicom.uid.UID("1.2.840.10008.1.2.4.100")) == ""  # MPEG-2: no decoder at all


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=["rle", "jpeg-ls", "jpeg2000"])
def test_compressed_transfer_syntaxes_decode_exactly(series_copy, sample_volume, syntax):
    for f in _lowest_slices(series_copy):
        ds = pydicom.dcmread(f)
        ds.compress(syntax)
        ds.save_as(f)
    v = read_scan(series_copy)
    assert v.source_headers[0].file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(v.hu, sample_volume.hu)


def _encode_jpeg_lossless_sv1(path):
    """Re-encode one DICOM file as JPEG Lossless process 14 SV1 (1.2.840.10008.1.2.4.70), the syntax most
    PACS send for lossless CT. pydicom has no encoder for it, so GDCM (a test-only dependency) writes it."""
    gdcm = pytest.importorskip("gdcm")
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    assert reader.Read(), path
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change(), path
    writer = gdcm.ImageWriter()
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    writer.SetFileName(str(path))
    assert writer.Write(), path


def test_jpeg_lossless_decodes_exactly_with_pylibjpeg(series_copy, sample_volume):
    from pydicom.uid import JPEGLosslessSV1

    from coviax.scan import decoding_plugin

    for f in _lowest_slices(series_copy):
        _encode_jpeg_lossless_sv1(f)
    # GDCM is installed here (to encode) and pydicom would prefer it; the reader picks pylibjpeg-libjpeg,
    # the plugin the product depends on
    assert decoding_plugin(JPEGLosslessSV1) == "pylibjpeg"
    v = read_scan(series_copy)
    syntaxes = {h.file_meta.TransferSyntaxUID for h in v.source_headers}
    assert JPEGLosslessSV1 in syntaxes
    assert np.array_equal(v.hu, sample_volume.hu)


def test_undecodable_transfer_syntax(series_copy):
    f = _files(series_copy)[0]
    ds = pydicom.dcmread(f)
    # MPEG-2: a valid DICOM transfer syntax for which no image decoder exists here
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    ds.PixelData = pydicom.encaps.encapsulate([bytes(ds.PixelData)])
    ds["PixelData"].VR = "OB"
    ds.save_as(f, enforce_file_format=True)
    with pytest.raises(PixelDataError, match=r"cannot decode pixel data in transfer syntax MPEG2"):
        read_scan(series_copy)


def test_corrupt_jpeg2000_fragment(series_copy):
    f = _files(series_copy)[0]
    ds = pydicom.dcmread(f)
    ds.compress(JPEG2000Lossless)
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = pydicom.encaps.encapsulate([frame[: len(frame) // 3]])  # truncated codestream
    ds.save_as(f)
    with pytest.raises(PixelDataError, match=f"{f.name}.*JPEG 2000"):
        read_scan(series_copy)


def test_nifti_round_trip_keeps_geometry(sample_volume, tmp_path):
    path = tmp_path / "scan.nii.gz"
    sitk.WriteImage(sample_volume.to_sitk(), str(path))
    v = read_scan(path)
    assert np.array_equal(v.hu, sample_volume.hu)
    assert v.spacing_zyx == pytest.approx(sample_volume.spacing_zyx)
    assert v.origin_xyz == pytest.approx(sample_volume.origin_xyz, abs=1e-3)
    assert np.allclose(v.direction, sample_volume.direction)


def test_nifti_not_in_hu_is_flagged(sample_volume, tmp_path):
    path = tmp_path / "raw.nii.gz"
    sitk.WriteImage(sample_volume.to_sitk((sample_volume.hu.astype(np.int32) + 1024).astype(np.int16)), str(path))
    with pytest.raises(ScanError, match="not plausibly Hounsfield units"):
        read_scan(path)


def test_series_uid_selection(series_copy, tmp_path):
    with pytest.raises(ScanError, match="series 1.2.3 not found"):
        read_scan(series_copy, series_uid="1.2.3")
