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
from coviax.io import read_scan


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
    from coviax.io.pixels import decoding_plugin

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

    from coviax.io.pixels import decoding_plugin

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


# ------------------------------------------------- hostile input (issue 13: items 1, 2, 4, 8)


class PanicException(BaseException):
    """What pyo3 raises when a Rust decoder panics: a BaseException, not an Exception."""


def _first_ds(series_copy):
    f = _files(series_copy)[5]
    return f, pydicom.dcmread(f)


def test_a_decoder_panic_is_a_pixel_data_error(series_copy, monkeypatch):
    from coviax.io import slice_to_hu

    f, ds = _first_ds(series_copy)

    def panic(self):
        raise PanicException("called `Result::unwrap()` on an `Err` value")

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(panic))
    with pytest.raises(PixelDataError, match="decoder crashed on the pixel data") as info:
        slice_to_hu(ds, f.name)
    assert "PanicException" not in str(info.value)
    with pytest.raises(PixelDataError, match="decoder crashed"):
        read_scan(series_copy)


def test_a_decoder_never_swallows_keyboard_interrupt(series_copy, monkeypatch):
    from coviax.io import slice_to_hu

    f, ds = _first_ds(series_copy)

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(interrupted))
    with pytest.raises(KeyboardInterrupt):
        slice_to_hu(ds, f.name)


def test_slice_to_hu_is_the_series_readers_conversion(series_copy, sample_volume):
    from coviax.io import slice_to_hu

    files = sorted(_files(series_copy), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True)
                                                          .ImagePositionPatient[2]))
    z = 10 if sample_volume.direction[2, 2] > 0 else len(files) - 11
    hu = slice_to_hu(pydicom.dcmread(files[10]), files[10].name)
    assert hu.dtype == np.int16 and np.array_equal(hu, sample_volume.hu[z])


@pytest.mark.parametrize("keyword, value, match", [
    ("RescaleSlope", "NaN", r"RescaleSlope \(0028,1053\) is \[nan\]; expected 1 finite"),
    ("RescaleSlope", "0", r"RescaleSlope \(0028,1053\) is 0"),
    ("RescaleIntercept", "inf", r"RescaleIntercept \(0028,1052\) is \[inf\]"),
    ("PixelSpacing", [0, 0], r"PixelSpacing \(0028,0030\) is \[0.0, 0.0\]; both values must be positive"),
    ("PixelSpacing", ["NaN", "0.8"], r"PixelSpacing \(0028,0030\) is \[nan, 0.8\]"),
    ("ImageOrientationPatient", [1, 0, 0, 0, 1], r"ImageOrientationPatient \(0020,0037\) is .*expected 6"),
])
def test_invalid_rescale_and_geometry_values_are_refused(series_copy, keyword, value, match):
    for f in _files(series_copy):
        ds = pydicom.dcmread(f)
        setattr(ds, keyword, value)
        ds.save_as(f)
    with pytest.raises(ScanError, match=match):
        read_scan(series_copy)


@pytest.mark.parametrize("keyword", ["Rows", "Columns"])
def test_missing_image_size_is_a_named_error_not_attribute_error(series_copy, keyword):
    f = _files(series_copy)[0]
    ds = pydicom.dcmread(f)
    delattr(ds, keyword)
    ds.save_as(f)
    with pytest.raises(ScanError, match=f"missing {keyword}"):
        read_scan(series_copy)


def test_bits_allocated_of_12_is_refused_before_decoding(series_copy):
    f = _files(series_copy)[0]
    ds = pydicom.dcmread(f)
    ds["BitsAllocated"].value = 12  # a CT slice has 8, 16 or 32 bits per pixel
    ds.save_as(f)
    with pytest.raises(PixelDataError, match=r"BitsAllocated \(0028,0100\) 12"):
        read_scan(series_copy)


def test_mixed_orientation_message_prints_plain_numbers(series_copy):
    f = _files(series_copy)[7]
    ds = pydicom.dcmread(f)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.8, -0.6]
    ds.save_as(f)
    with pytest.raises(GeometryError, match=r"\[1\.0, 0\.0, 0\.0, 0\.0, 0\.8, -0\.6\]") as info:
        read_scan(series_copy)
    assert "np.float64" not in str(info.value)


def _deflated_copy(src, dst, payload: bytes | None = None):
    """``src`` saved in Deflated Explicit VR Little Endian; with ``payload``, its deflated data set replaced."""
    import zlib

    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(dst, enforce_file_format=True)
    if payload is not None:
        data = dst.read_bytes()
        meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")  # (0002,0000) group length
        compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        dst.write_bytes(data[:meta_end] + compressor.compress(payload) + compressor.flush())


def test_a_deflate_bomb_is_refused_before_it_is_inflated(series_copy):
    files = _files(series_copy)
    _deflated_copy(files[3], files[3], payload=b"\0" * (80 * 1024**2))  # 80 MiB of zeros: about 80 KB deflated
    assert files[3].stat().st_size < 1024**2
    with pytest.raises(ScanError, match="inflates to more than 64 MiB; refusing a likely deflate bomb"):
        read_scan(series_copy)


def _empty_private_elements(n: int) -> bytes:
    """``n`` empty LO elements (0009,0010), (0009,0011), ... in Explicit VR Little Endian."""
    import struct

    return b"".join(struct.pack("<HH2sH", 0x0009, 0x0010 + k % 0xFF00, b"LO", 0) for k in range(n))


@pytest.mark.parametrize("payload", ["zeros", "private"])
@pytest.mark.parametrize("deflated", [True, False])
def test_a_header_of_millions_of_empty_elements_is_refused_at_once(series_copy, deflated, payload):
    """atheris found 121 KB deflated into 32 MiB of zeros, four million empty command elements (0000,0000):
    pydicom took 20 s to read it. The same bytes stored plainly are as slow, and so are other empty
    elements. Each is refused within a second or so."""
    import time
    import zlib

    files = _files(series_copy)
    data_set = b"\0" * (4 * 1024**2) if payload == "zeros" else _empty_private_elements(100_000)
    _deflated_copy(files[3], files[3], payload=data_set)
    if not deflated:  # the same data set, inflated, in Explicit VR Little Endian
        data = files[3].read_bytes()
        meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")
        meta = data[:meta_end].replace(b"1.2.840.10008.1.2.1.99", b"1.2.840.10008.1.2.1\0\0\0")  # same length
        files[3].write_bytes(meta + zlib.decompress(data[meta_end:], -zlib.MAX_WBITS))
    started = time.perf_counter()
    message = "more than 64 command elements" if payload == "zeros" else "more than 20000 data elements"
    with pytest.raises(ScanError, match=message):
        read_scan(series_copy)
    assert time.perf_counter() - started < 5


def test_a_corrupt_deflated_data_set_is_a_named_error_not_zlib_error(series_copy):
    files = _files(series_copy)
    _deflated_copy(files[3], files[3])
    data = bytearray(files[3].read_bytes())
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")
    data[meta_end:meta_end + 64] = b"\xff" * 64
    files[3].write_bytes(bytes(data))
    with pytest.raises(ScanError, match="corrupt DICOM file"):
        read_scan(series_copy)


def test_a_deflated_series_still_reads(series_copy, sample_volume):
    for f in _files(series_copy)[:4]:
        _deflated_copy(f, f)
    assert np.array_equal(read_scan(series_copy).hu, sample_volume.hu)


def test_deep_sequences_long_pixel_data_and_implausible_values_are_refused(series_copy):
    """Found by the malformed corpus (tests/malformed_corpus.py): each read without complaint before."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    files = _files(series_copy)
    original = {f: f.read_bytes() for f in files}

    def restore():
        for f, data in original.items():
            f.write_bytes(data)

    ds = pydicom.dcmread(files[5])
    inner = Dataset()
    inner.CodeValue = "X"
    for _ in range(65):
        outer = Dataset()
        outer.ContentSequence = Sequence([inner])
        inner = outer
    ds.ContentSequence = inner.ContentSequence
    ds.save_as(files[5])
    with pytest.raises(ScanError, match="sequences nested more than 64 levels deep"):
        read_scan(series_copy)
    restore()
    ds = pydicom.dcmread(files[5])
    ds.PixelData = ds.PixelData + b"\0" * 1000
    ds.save_as(files[5])
    with pytest.raises(PixelDataError, match="more than Rows x Columns"):
        read_scan(series_copy)
    restore()
    data = files[5].read_bytes()
    files[5].write_bytes(data[:-100])  # the file ends inside the pixel data
    with pytest.raises(PixelDataError, match="truncated"):
        read_scan(series_copy)
    restore()
    for keyword, value, match in (("RescaleSlope", -1, "RescaleSlope .* is -1; a CT's slope is positive"),
                                  ("PixelSpacing", [1e-5, 1e-5], "a CT image has 0.01 to 50 mm")):
        for f in files:
            d = pydicom.dcmread(f)
            setattr(d, keyword, value)
            d.save_as(f)
        with pytest.raises(ScanError, match=match):
            read_scan(series_copy)
        restore()
    assert read_scan(series_copy).shape == (64, 512, 512)


def test_a_value_that_does_not_fit_its_vr_is_a_named_error(series_copy):
    from pydicom.uid import ExplicitVRLittleEndian

    f = _files(series_copy)[5]
    ds = pydicom.dcmread(f)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian  # so that the element has a VR in the file
    ds.save_as(f, enforce_file_format=True)
    data = bytearray(f.read_bytes())
    at = bytes(data).index(b"\x28\x00\x10\x00US\x02\x00")
    data[at + 6:at + 8] = b"\x03\x00"  # Rows: 3 bytes of a US value
    f.write_bytes(bytes(data))
    with pytest.raises(ScanError, match=r"corrupt DICOM file \(element \(0028,0010\) does not hold a valid value"):
        read_scan(series_copy)
