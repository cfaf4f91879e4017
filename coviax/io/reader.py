"""The one entry of scan reading: :func:`read_scan` takes a DICOM folder, a zip of one, or a
NIfTI/MHA/NRRD file."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from coviax.errors import GeometryError, ScanError
from coviax.io.archive import safe_extract_zip
from coviax.io.nifti import RESEARCH_SUFFIXES, read_image_file
from coviax.io.series import read_dicom_folder
from coviax.io.volume import Volume


def read_scan(path: str | os.PathLike, series_uid: str | None = None) -> Volume:
    """Read a chest CT from a DICOM folder, a zip of DICOM files, or a NIfTI/MHA/NRRD file.

    Parameters
    ----------
    path:
        a folder (searched recursively), a ``.zip``, a single DICOM file (rejected:
        one slice is not a volume) or a NIfTI/MHA/NRRD file.
    series_uid:
        the SeriesInstanceUID to read when the input holds several series; by
        default the CT series with the most slices.

    Raises
    ------
    ScanError
        (and its subclasses) with a message naming the file, tag and value at fault.
    """
    path = Path(path)
    if not path.exists():
        raise ScanError(f"{path}: no such file or folder")
    if path.is_dir():
        return read_dicom_folder(path, series_uid, display_root=path)
    name = path.name.lower()
    if name.endswith(".zip"):
        with tempfile.TemporaryDirectory(prefix="coviax-zip-") as tmp:
            safe_extract_zip(path, Path(tmp))
            volume = read_dicom_folder(Path(tmp), series_uid, display_root=Path(tmp))
            volume.source_path = str(path)
            return volume
    if name.endswith(RESEARCH_SUFFIXES):
        return read_image_file(path)
    # A lone file: DICOM or not, it cannot be a volume.
    try:
        pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise ScanError(
            f"{path}: not a DICOM file, zip, folder or NIfTI/MHA/NRRD file ({exc.__class__.__name__})"
        ) from None
    raise GeometryError(
        f"{path}: a single DICOM slice; COViaX needs a volume (a folder or zip of the whole series)"
    )
