"""The research formats, read with SimpleITK: NIfTI, MHA/MHD and NRRD."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from coviax.errors import GeometryError, ScanError
from coviax.io.volume import HU_MAX, HU_MIN, Volume, check_plausible_hu

#: Formats read with SimpleITK, by file name ending.
RESEARCH_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")


def read_image_file(path: Path) -> Volume:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unreadable"
        raise ScanError(f"{path}: cannot be read as an image ({first_line})") from None
    if image.GetDimension() != 3 or image.GetSize()[2] < 2:
        raise GeometryError(
            f"{path}: image of size {image.GetSize()}; COViaX needs a 3D volume with at least 2 slices"
        )
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ScanError(f"{path}: {image.GetNumberOfComponentsPerPixel()} components per voxel; expected a grey CT")
    warnings: list[str] = []
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    if abs(direction[2, 2]) < 0.8:
        # Not stored as axial slices: reorient losslessly (axis permutation and
        # flips only) so that the array's first axis runs along the body.
        image = sitk.DICOMOrient(image, "LPS")
        warnings.append(f"{path.name}: volume was not stored as axial slices; reoriented to LPS for analysis")
    raw = sitk.GetArrayFromImage(image).astype(np.float32)
    check_plausible_hu(raw, where=str(path), hint="If the file stores raw detector values, convert it to HU first.")
    image_hu = sitk.GetImageFromArray(np.clip(np.rint(raw), HU_MIN, HU_MAX).astype(np.int16))
    image_hu.CopyInformation(image)
    suffix = next(s for s in RESEARCH_SUFFIXES if path.name.lower().endswith(s))
    return Volume.from_sitk(
        image_hu, source_format=suffix.lstrip("."), source_path=str(path), warnings=warnings
    )
