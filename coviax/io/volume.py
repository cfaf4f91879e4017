"""The volume every stage works on: :class:`Volume` (int16 HU, z y x, with its patient geometry),
the HU range and the check that values are Hounsfield units at all."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pydicom

from coviax.errors import ScanError

#: HU are clipped to this range: values below -1024 are padding outside the
#: reconstruction circle (-2000, -3024), values above 3071 are metal.
HU_MIN, HU_MAX = -1024, 3071


@dataclass
class Volume:
    """A CT volume in Hounsfield units with its patient geometry.

    Attributes
    ----------
    hu:
        int16 array (z, y, x) in Hounsfield units, clipped to [-1024, 3071].
    spacing_zyx:
        voxel size in mm along (z, y, x).
    origin_xyz:
        patient position (LPS, mm) of the centre of voxel (0, 0, 0).
    direction:
        3x3 matrix whose columns are the patient (LPS) directions of the x, y and
        z array axes, as SimpleITK and DICOM define them.
    series_uid:
        SeriesInstanceUID of the source DICOM series (None for NIfTI and MHA).
    source_headers:
        the source DICOM datasets without pixel data, in the order of ``hu``'s
        z axis (the DICOM SEG references them). Empty for non-DICOM input.
    """

    hu: np.ndarray
    spacing_zyx: tuple[float, float, float]
    origin_xyz: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    series_uid: str | None = None
    source_format: str = "array"
    source_path: str = ""
    source_headers: list[pydicom.Dataset] = field(default_factory=list, repr=False)
    warnings: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing_zyx)) / 1000.0

    def index_to_patient(self, zyx: Sequence[float] | np.ndarray) -> np.ndarray:
        """Patient coordinates (LPS, mm) of array indices (z, y, x); accepts (..., 3)."""
        zyx = np.asarray(zyx, dtype=np.float64)
        xyz_mm = zyx[..., ::-1] * np.asarray(self.spacing_zyx[::-1])
        return np.asarray(self.origin_xyz) + xyz_mm @ self.direction.T

    def to_sitk(self, array: np.ndarray | None = None):
        """A SimpleITK image of ``array`` (default: the HU) in this volume's geometry."""
        import SimpleITK as sitk  # lazy: the DICOM path does not need it (slim GPU hosts)

        image = sitk.GetImageFromArray(self.hu if array is None else array)
        image.SetSpacing(tuple(float(s) for s in self.spacing_zyx[::-1]))
        image.SetOrigin(tuple(float(o) for o in self.origin_xyz))
        image.SetDirection(tuple(float(d) for d in self.direction.ravel()))
        return image

    @classmethod
    def from_sitk(cls, image, **kwargs) -> "Volume":
        import SimpleITK as sitk

        hu = sitk.GetArrayFromImage(image)
        return cls(
            hu=hu,
            spacing_zyx=tuple(float(s) for s in image.GetSpacing()[::-1]),
            origin_xyz=tuple(float(o) for o in image.GetOrigin()),
            direction=np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3),
            **kwargs,
        )

    @property
    def superior_axis_sign(self) -> float:
        """+1 if increasing z index goes towards the head (S), -1 if towards the feet."""
        return float(np.sign(self.direction[2, 2]) or 1.0)


#: A scan whose 99.9th percentile is below this holds no tissue at all (issue 31 item 6: an all-air upload
#: was analysed and answered OK with an empty lung).
NO_BODY_HU = -500


def check_plausible_hu(values: np.ndarray, where: str, hint: str) -> None:
    """Reject volumes whose values cannot be Hounsfield units of a chest CT.

    A chest CT always contains air (outside the body and in the lungs) near
    -1000 HU. Volumes with nothing below -200 are almost surely unrescaled raw
    values or a non-CT image, and would give all-empty lung masks (a known
    lungmask pitfall). A volume that is air throughout has nothing to measure either.
    """
    sample = values[:: max(1, values.shape[0] // 8)]
    low, high = (float(v) for v in np.percentile(sample, (1, 99.9)))
    if low > -200:
        raise ScanError(
            f"{where}: values are not plausibly Hounsfield units (1st percentile {low:.0f}, "
            f"minimum {float(values.min()):.0f}; air in a chest CT is near -1000 HU). {hint}"
        )
    if high < NO_BODY_HU:  # nothing denser than air: no body, no vessel, nothing to measure
        raise ScanError(
            f"{where}: every value is air (99.9th percentile {high:.0f} HU, maximum {float(values.max()):.0f}); "
            "a chest CT has a body and vessels above -500 HU. Was the right series sent, and in HU?"
        )
