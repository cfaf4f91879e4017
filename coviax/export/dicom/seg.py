"""DICOM Segmentation (highdicom) that overlays on the source CT series in a viewer.

One segment per class present: healthy lung, vessel, ground-glass opacity,
consolidation. Frames reference the source instances, so a PACS viewer places
them on the original slices. Not every PACS shows SEG; the PNG montage (and
later an overlay series) covers those.

Patient and study attributes are copied from the source by highdicom (the SEG
must join the patient's study); our code never logs or prints them. An
incomplete ReferencedStudySequence item of the source is dropped, not copied
(:func:`conform_study_attributes`).
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from coviax.export.dicom._common import (MODEL_NAME, SOFTWARE_VERSION, conform_study_attributes, new_instance,
                                         no_person_name_warnings)
from coviax.labels import Label

_ANATOMY = Code("91723000", "SCT", "Anatomical Structure")
_ABNORMAL = Code("49755003", "SCT", "Morphologically Abnormal Structure")

#: (label, segment label, category, property type) -- codes from DICOM CID 7150 / 6104 and SNOMED CT.
SEGMENTS = (
    (Label.HEALTHY_LUNG, "Healthy lung", _ANATOMY, Code("39607008", "SCT", "Lung")),
    (Label.VESSEL, "Vessel", _ANATOMY, Code("59820001", "SCT", "Blood vessel")),
    (Label.GGO, "Ground-glass opacity", _ABNORMAL, Code("112120", "DCM", "Ground glass opacity")),
    (Label.CONSOLIDATION, "Consolidation", _ABNORMAL, Code("95436008", "SCT", "Lung consolidation")),
)

_LESION = Code("52988006", "SCT", "Lesion")
#: The follow-up change map's segments (codes of coviax.change: 1 new, 2 resolved, 3 persistent).
CHANGE_SEGMENTS = (
    (1, "New lesion", _ABNORMAL, _LESION),
    (2, "Resolved lesion", _ABNORMAL, _LESION),
    (3, "Persistent lesion", _ABNORMAL, _LESION),
)


def write_dicom_seg(labels: np.ndarray, volume, path: str | Path, algorithm: str, segments=SEGMENTS,
                    description: str = "COViaX lung lesions (research use only)") -> Path:
    """Write ``labels`` (z y x, same order as ``volume.source_headers``) as a DICOM SEG.

    ``segments``: (code in ``labels``, segment label, category, property type) of each possible
    segment (:data:`SEGMENTS`, or :data:`CHANGE_SEGMENTS` for a follow-up change map).

    Raises
    ------
    ValueError
        if the volume was not read from DICOM (a SEG needs source instances).
    """
    if not volume.source_headers:
        raise ValueError("a DICOM SEG needs a DICOM source series; this scan was read from " + volume.source_format)
    present = [s for s in segments if np.any(labels == s[0])]
    if not present:
        present = [segments[0]]
    algorithm_id = hd.AlgorithmIdentificationSequence(
        name="COViaX " + algorithm,
        version=SOFTWARE_VERSION,
        # K-means is cluster analysis; the U-Net is artificial intelligence (DICOM CID 7162).
        family=codes.cid7162.ClusterAnalysis if "kmeans" in algorithm else codes.cid7162.ArtificialIntelligence,
    )
    descriptions = []
    # A label map with segment numbers 1..n in the order of `present`.
    label_map = np.zeros(labels.shape, dtype=np.uint8)
    for number, (label, name, category, prop) in enumerate(present, start=1):
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=category,
                segmented_property_type=prop,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm_id,
            )
        )
        label_map[labels == label] = number
    with no_person_name_warnings():
        seg = _segmentation(volume, label_map, descriptions, description)
    conform_study_attributes(seg)
    # No Laterality (General Series, type 2C) on the SEG: dciodvfy reads the condition as unsatisfied for
    # this multi-frame IOD and reports an error when it is present, even empty. pixelmed's
    # DicomInstanceValidator reports the opposite ("Missing conditional attribute"): its rule requires it
    # whenever no Image/Frame Laterality exists, without the standard's "paired body part" test. The two
    # cannot both be met; we follow dciodvfy (docs/CONFORMANCE.md quotes both).
    path = Path(path)
    seg.save_as(path)
    return path


def _segmentation(volume, label_map: np.ndarray, descriptions: list, description: str) -> hd.seg.Segmentation:
    return hd.seg.Segmentation(
        source_images=volume.source_headers,
        pixel_array=label_map,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        **new_instance(9901),
        manufacturer_model_name=MODEL_NAME,
        software_versions=SOFTWARE_VERSION,
        device_serial_number="0",
        series_description=description[:64],
        omit_empty_frames=True,
    )
