"""The report page as a DICOM Secondary Capture image, in the source study, for viewers without SEG/SR support.

A new series (number 9903) in the same study as the CT (highdicom copies the
patient and study attributes from the first source header); RGB, RLE lossless
(a mostly white page compresses about 4x). The page carries no patient
identifier, so BurnedInAnnotation is NO.

The RLE encoding is done with pylibjpeg-rle, named explicitly: pydicom would
otherwise prefer GDCM when python-gdcm is installed, and GDCM 3.2.6's RLE
encoder aborts the whole process on this RGB page (seen in our CI).
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.uid import RLELossless

import coviax
from coviax.export.dicom._common import (MODEL_NAME, SOFTWARE_VERSION, conform_study_attributes, new_instance,
                                         no_person_name_warnings)

SERIES_NUMBER = 9903


def write_secondary_capture(page_rgb: np.ndarray, volume, path: str | Path) -> Path:
    """Write ``page_rgb`` (H x W x 3 uint8) as an SC image in ``volume``'s study.

    Raises
    ------
    ValueError
        if the volume was not read from DICOM (the SC must join the source study).
    """
    if not volume.source_headers:
        raise ValueError("a Secondary Capture needs a DICOM source series; this scan was read from " + volume.source_format)
    with no_person_name_warnings():
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=volume.source_headers[0],
            pixel_array=np.ascontiguousarray(page_rgb, dtype=np.uint8),
            photometric_interpretation="RGB",
            bits_allocated=8,
            # highdicom needs a coordinate system; a report page has no patient
            # orientation, so the (type 2C) PatientOrientation is emptied below.
            coordinate_system="PATIENT",
            patient_orientation=("L", "F"),
            **new_instance(SERIES_NUMBER),
        )
    sc.compress(RLELossless, encoding_plugin="pylibjpeg")  # not GDCM: see the module docstring
    sc.PatientOrientation = None
    sc.ConversionType = "WSD"  # workstation: a rendered page, not a digitised film
    sc.BurnedInAnnotation = "NO"  # the page holds no patient identifier
    sc.SeriesDescription = "COViaX report page (research use only)"
    sc.SoftwareVersions = SOFTWARE_VERSION
    sc.ManufacturerModelName = MODEL_NAME
    sc.ImageComments = coviax.RESEARCH_USE_NOTICE
    conform_study_attributes(sc)
    # Laterality (General Series, type 2C) is required for a paired body part; the page covers both lungs,
    # so it is the source's R or L when the series has one, else empty (dciodvfy then warns that empty
    # means unknown -- a warning, not an error; absent is an error for this IOD).
    laterality = str(volume.source_headers[0].get("Laterality", "") or "")
    sc.Laterality = laterality if laterality in ("R", "L") else None
    path = Path(path)
    sc.save_as(path)
    return path
