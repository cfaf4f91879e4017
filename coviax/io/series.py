"""A DICOM series from a folder: the files parsed (:mod:`coviax.io.dicom_file`), grouped by series, the
CT series chosen, its slices checked and placed (:mod:`coviax.io.geometry`) and decoded to HU
(:mod:`coviax.io.pixels`) -> :class:`Volume` with the headers the DICOM SEG references."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pydicom

from coviax.errors import GeometryError, NotCTError, ScanError
from coviax.io.dicom_file import DicomSlice, read_dicom_file
from coviax.io.geometry import order_along, slice_grid, slice_positions
from coviax.io.pixels import slice_to_hu
from coviax.io.tags import plain_numbers
from coviax.io.volume import Volume, check_plausible_hu

MAX_SLICES = 2000

_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


def _iter_files(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def read_dicom_folder(root: Path, series_uid: str | None, display_root: Path) -> Volume:
    files = list(_iter_files(root))
    if not files:
        raise ScanError(f"{display_root}: the folder is empty; expected the DICOM files of a CT series")
    series: dict[str, list[DicomSlice]] = {}
    not_dicom: list[str] = []
    for path in files:
        display = str(path.relative_to(root)) if root != display_root else str(path)
        ds = read_dicom_file(path, display)
        if ds is None:
            not_dicom.append(display)
            continue
        if str(getattr(ds, "SOPClassUID", "")) == _DICOMDIR_SOP_CLASS:
            continue  # a DICOMDIR index; we walk the files themselves
        uid = str(getattr(ds, "SeriesInstanceUID", "")) or "(no SeriesInstanceUID)"
        series.setdefault(uid, []).append(DicomSlice(path=Path(display), ds=ds))
    if not series:
        example = ", ".join(not_dicom[:3])
        raise ScanError(f"{display_root}: no DICOM files found among {len(files)} files (e.g. {example})")

    chosen_uid = _choose_series(series, series_uid, display_root)
    slices = series[chosen_uid]
    volume = _stack_series(slices, display_root)
    volume.series_uid = chosen_uid
    volume.source_path = str(display_root)
    if not_dicom:
        volume.warnings.append(f"{len(not_dicom)} non-DICOM files ignored (e.g. {not_dicom[0]})")
    if len(series) > 1:
        volume.warnings.append(f"{len(series)} series found; read {chosen_uid} ({len(slices)} slices)")
    return volume


def _is_localizer(ds: pydicom.Dataset) -> bool:
    image_type = [str(v).upper() for v in getattr(ds, "ImageType", [])]
    return "LOCALIZER" in image_type


def _choose_series(series: dict[str, list[DicomSlice]], wanted: str | None, where: Path) -> str:
    if wanted is not None:
        if wanted not in series:
            listing = "; ".join(f"{uid} ({len(s)} files)" for uid, s in series.items())
            raise ScanError(f"{where}: series {wanted} not found; series present: {listing}")
        slices = series[wanted]
        require_ct(slices[0])
        return wanted
    ct = {uid: s for uid, s in series.items() if str(getattr(s[0].ds, "Modality", "")).upper() == "CT"}
    if not ct:
        first = next(iter(series.values()))[0]
        require_ct(first)  # raises with the file name and the modality found
    axial = {uid: s for uid, s in ct.items() if not _is_localizer(s[0].ds)} or ct
    return max(axial, key=lambda uid: len(axial[uid]))


def require_ct(s: DicomSlice) -> None:
    modality = str(getattr(s.ds, "Modality", "")) or "(absent)"
    if modality.upper() != "CT":
        raise NotCTError(
            f"{s.path}: Modality (0008,0060) is {modality!r}; COViaX analyses CT series only "
            "(lung density in Hounsfield units has no meaning in other modalities)"
        )


def _stack_series(slices: list[DicomSlice], where: Path) -> Volume:
    """One volume from the slices of a series: checked, placed along the slice normal, decoded to HU."""
    _check_slices(slices, where)
    first = slices[0]
    iop0, rows, cols, pixel_spacing = slice_grid(first)
    positions_xyz = slice_positions(slices, iop0, rows, cols)
    row_cos, col_cos = iop0[:3], iop0[3:]
    normal = np.cross(row_cos, col_cos)
    if abs(normal[2]) < 0.8:
        raise GeometryError(
            f"{first.path}: slices are not axial (slice normal {plain_numbers(normal, 3)}); "
            "COViaX analyses axial chest CT series"
        )
    slices, positions_xyz, median_step = order_along(normal, slices, positions_xyz, where)
    hu = _decode_series(slices, rows, cols, where)
    headers = []
    for s in slices:
        header = s.ds.copy()
        if "PixelData" in header:
            del header.PixelData
        headers.append(header)
    origin = tuple(float(v) for v in positions_xyz[0])
    direction = np.stack([row_cos, col_cos, normal], axis=1)
    return Volume(
        hu=hu,
        spacing_zyx=(median_step, float(pixel_spacing[0]), float(pixel_spacing[1])),
        origin_xyz=origin,  # type: ignore[arg-type]
        direction=direction,
        source_format="dicom",
        source_headers=headers,
    )


def _check_slices(slices: list[DicomSlice], where: Path) -> None:
    """Every slice a single-frame CT image, and between 2 and MAX_SLICES of them."""
    for s in slices:
        require_ct(s)
        if int(getattr(s.ds, "NumberOfFrames", 1) or 1) > 1:
            raise ScanError(
                f"{s.path}: a multi-frame (enhanced) CT image with {s.ds.NumberOfFrames} frames; "
                "COViaX reads single-frame CT series only. Convert with dcm2niix or export classic CT from the PACS."
            )
    if len(slices) < 2:
        raise GeometryError(
            f"{slices[0].path}: the series has a single slice; COViaX needs a volume (at least 2 slices, "
            "a chest CT has 50-1000)"
        )
    if len(slices) > MAX_SLICES:
        raise ScanError(f"{where}: {len(slices)} slices exceed the limit of {MAX_SLICES}")


def _decode_series(slices: list[DicomSlice], rows: int, cols: int, where: Path) -> np.ndarray:
    """The HU volume (int16, z y x) of the ordered slices; each slice's raw pixel bytes are freed once
    decoded, and a sample of slices is checked for plausible HU."""
    hu = np.empty((len(slices), rows, cols), dtype=np.int16)
    samples = []
    for k, s in enumerate(slices):
        hu[k] = slice_to_hu(s.ds, s.path)
        if k % max(1, len(slices) // 8) == 0:
            samples.append(hu[k])
        del s.ds.PixelData  # decoded: free the raw bytes now (headers are kept for the SEG)
    check_plausible_hu(
        np.stack(samples),
        where=f"{where} (series of {len(slices)} slices)",
        hint="Check RescaleSlope (0028,1053) and RescaleIntercept (0028,1052): raw CT values need an "
        "intercept of about -1024.",
    )
    return hu
