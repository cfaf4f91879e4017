"""Pixel data to Hounsfield units: :func:`slice_to_hu`, used by the series reader and by the service for
streamed slices, so a slice gets the same HU either way. Declared sizes are checked against the bytes
present before anything is decoded; decoders are chosen explicitly (:data:`DECODER_PREFERENCE`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom

from coviax.errors import PixelDataError, ScanError
from coviax.io.dicom_file import describe_exception
from coviax.io.tags import tag_dimension, tag_numbers
from coviax.io.volume import HU_MAX, HU_MIN

#: Limits that protect the reader from hostile or broken input (FIELD_NOTES:
#: check declared sizes against real bytes before decoding anything).
MAX_SLICE_PIXELS = 2048 * 2048

#: Exceptions a decoder must never turn into a job failure: the process is being stopped.
_PROCESS_EXITS = (KeyboardInterrupt, SystemExit, GeneratorExit)


def slice_to_hu(ds: pydicom.Dataset, where: str | os.PathLike) -> np.ndarray:
    """The Hounsfield units (int16, rows x columns) of one single-frame CT instance.

    Decodes the pixel data (with :data:`DECODER_PREFERENCE`), applies RescaleSlope and
    RescaleIntercept, rounds and clips to [HU_MIN, HU_MAX]. The series reader and the
    service's streamed slices both use this, so a slice gets the same HU either way.
    ``where`` names the instance in error messages.

    Raises
    ------
    ScanError
        (PixelDataError for pixel data) naming the instance, the tag and the value at fault.
    """
    where = Path(where)
    pixels = _decode_pixels(ds, where)
    why = "cannot convert to Hounsfield units"
    slope = float(tag_numbers(ds, "RescaleSlope", "(0028,1053)", where, why, 1)[0])
    intercept = float(tag_numbers(ds, "RescaleIntercept", "(0028,1052)", where, why, 1)[0])
    if slope <= 0:
        raise ScanError(f"{where}: RescaleSlope (0028,1053) is {slope:g}; a CT's slope is positive "
                        f"(usually 1) ({why})")
    values = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return np.clip(np.rint(values), HU_MIN, HU_MAX).astype(np.int16)


#: pydicom decoding plugins in the order we use them. pydicom itself prefers GDCM whenever python-gdcm is
#: installed; GDCM comes last here because its encoder has aborted our whole process (see
#: coviax/export/dicom/sc.py) and an abort in a decoder would take the service down with it.
DECODER_PREFERENCE = ("pylibjpeg", "pyjpegls", "pydicom", "pillow", "gdcm")


def decoding_plugin(tsuid) -> str:
    """The pydicom plugin that decodes ``tsuid`` here ("" for uncompressed data or when none is installed,
    which lets pydicom raise its own error naming the missing packages)."""
    from pydicom.pixels import get_decoder

    if tsuid is None or not tsuid.is_compressed:
        return ""
    try:
        available = get_decoder(tsuid).available_plugins
    except NotImplementedError:  # a transfer syntax pydicom has no decoder for at all
        return ""
    return next((p for p in DECODER_PREFERENCE if p in available), "")


def _decode_pixels(ds: pydicom.Dataset, where: Path) -> np.ndarray:
    """The stored pixel values of one instance; declared sizes are checked before anything is decoded."""
    if "PixelData" not in ds:
        raise PixelDataError(f"{where}: no pixel data (7FE0,0010); the file holds only a header")
    meta = getattr(ds, "file_meta", None)
    tsuid = meta.get("TransferSyntaxUID") if meta is not None else None
    ts_name = getattr(tsuid, "name", str(tsuid)) if tsuid is not None else "(no TransferSyntaxUID)"
    rows, cols = tag_dimension(ds, "Rows", "(0028,0010)", where), tag_dimension(ds, "Columns", "(0028,0011)", where)
    if rows * cols > MAX_SLICE_PIXELS:
        raise PixelDataError(f"{where}: Rows x Columns = {rows}x{cols} exceeds the limit of {MAX_SLICE_PIXELS} pixels")
    bits = int(tag_numbers(ds, "BitsAllocated", "(0028,0100)", where, "cannot read the pixels", 1)[0]) \
        if "BitsAllocated" in ds else 16
    samples = int(tag_numbers(ds, "SamplesPerPixel", "(0028,0002)", where, "cannot read the pixels", 1)[0]) \
        if "SamplesPerPixel" in ds else 1
    if bits not in (8, 16, 32) or samples != 1:
        raise PixelDataError(
            f"{where}: BitsAllocated (0028,0100) {bits} and SamplesPerPixel (0028,0002) {samples}; "
            "a CT slice has one sample of 8, 16 or 32 bits per pixel"
        )
    if tsuid is not None and not tsuid.is_compressed:
        expected = rows * cols * bits // 8
        try:
            actual = len(ds.PixelData)
        except Exception as exc:  # a deferred read of a truncated or vanished file
            raise PixelDataError(f"{where}: truncated or unreadable pixel data ({describe_exception(exc)})") from None
        if actual < expected:
            raise PixelDataError(
                f"{where}: truncated pixel data: {actual} bytes for Rows x Columns = {rows}x{cols} "
                f"at {bits} bits ({expected} bytes expected)"
            )
        if actual > expected + 1:  # one byte of padding to an even length is allowed
            raise PixelDataError(
                f"{where}: pixel data of {actual} bytes, more than Rows x Columns = {rows}x{cols} at {bits} bits "
                f"({expected} bytes); the image size or BitsAllocated (0028,0100) is wrong"
            )
    plugin = decoding_plugin(tsuid) if tsuid is not None else ""
    try:
        ds.pixel_array_options(decoding_plugin=plugin)
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        raise PixelDataError(
            f"{where}: cannot decode pixel data in transfer syntax {ts_name} ({tsuid}): {describe_exception(exc)}. "
            "Install the pylibjpeg plugins or re-export the series uncompressed."
        ) from None
    except Exception as exc:  # ValueError, EOFError, OSError, and whatever else a decoder raises on bad bytes
        raise PixelDataError(f"{where}: corrupt pixel data in transfer syntax {ts_name}: {describe_exception(exc)}") from None
    except _PROCESS_EXITS:
        raise
    except BaseException:  # a decoder written in Rust panics with pyo3's PanicException, a BaseException
        raise PixelDataError(
            f"{where}: the {plugin or 'pydicom'} decoder crashed on the pixel data in transfer syntax {ts_name}; "
            "the data is corrupt or in a form the decoder cannot handle. Re-export the series uncompressed."
        ) from None
    if pixels.ndim != 2:
        raise PixelDataError(f"{where}: pixel data of shape {pixels.shape}; expected one grey 2D slice")
    return pixels
