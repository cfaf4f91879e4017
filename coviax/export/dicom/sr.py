"""The measurements as a DICOM Comprehensive 3D SR (TID 1500 Measurement Report) that references the SEG.

Content (highdicom builds the templates):

- One TID 1411 volumetric group per segment of ``seg.dcm`` (healthy lung,
  vessel, ground-glass opacity, consolidation -- as present), each referencing
  the SEG's SOPInstanceUID and segment number (read from the SEG itself), with
  the class volume in mL; the GGO group also holds VRggo and the consolidation
  group VRcs (percent of the lung cavity).
- One TID 1501 group for the whole lung cavity (the union of the segments, which
  no single segment is): total, right and left lung volume, VRall, the percent
  of opacity and of high opacity, the six-zone score and (when computed) the
  lobe score; its source is the SEG instance.

The ratios and scores have no standard concept code; they use the private
coding scheme ``99COVIAX`` (DICOM reserves designators starting with 99 for
this), listed in docs/REPORT.md and declared in the SR's
CodingSchemeIdentificationSequence (SOP Common Module), as PS3.3 C.12.1.1.2
asks of any scheme that is not in PS3.16's table 8-1.

Validators (docs/CONFORMANCE.md quotes their output): dciodvfy reports no
error. pixelmed's DicomSRValidator (20220618) reports four errors that are its
own strictness, not defects of the SR -- see the comments at ``CT_CHEST`` and
in :func:`build_sr` where the whole-lung group is made.

Patient and study attributes come from the SEG (and so from the source CT):
the SR joins the same study. highdicom's warning that quotes the PatientName is
suppressed (:func:`coviax.export.dicom._common.no_person_name_warnings`).
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from coviax.export.dicom._common import (DEVICE_UID, MANUFACTURER, MODEL_NAME, SOFTWARE_VERSION,
                                         conform_study_attributes, new_instance, no_person_name_warnings)
from coviax.export.dicom.seg import SEGMENTS
from coviax.labels import Label

SERIES_NUMBER = 9902

ML = Code("mL", "UCUM", "milliliter")
PERCENT = codes.UCUM.Percent
NO_UNITS = codes.UCUM.NoUnits
VOLUME = codes.SCT.Volume
LUNG = codes.SCT.Lung
# Procedure reported: LOINC 24627-2 "CT Chest" (pydicom's code dictionary, from DICOM PS3.16, holds it
# as CTChestReport in CID 7000). CID 100, the extensible context group for this slot, has no chest-CT
# code -- only "CT unspecified body region" -- so the more specific LOINC procedure is used.
# pixelmed's DicomSRValidator reports this as "Error: ... Code (24627-2,LN,"CT Chest") not found in context
# group 100": its checkCodeIsInContextGroup rule errs on any code outside the group, even though its own
# template marks the row BCID (baseline) and its own context group file marks CID 100 extensible="T". The
# standard allows an extending code here, so this is the validator's strictness and the code stays.
CT_CHEST = Code("24627-2", "LN", "CT Chest")

_SCHEME = "99COVIAX"
_SCHEME_NAME = "COViaX private codes"
_SCHEME_ORGANIZATION = "COViaX project"
VR_ALL = Code("VRALL", _SCHEME, "GGO and consolidation volume, percent of lung")
VR_GGO = Code("VRGGO", _SCHEME, "GGO volume, percent of lung")
VR_CS = Code("VRCS", _SCHEME, "Consolidation volume, percent of lung")
OPACITY = Code("PO", _SCHEME, "Percent of opacity")
HIGH_OPACITY = Code("PHO", _SCHEME, "Percent of high opacity")
SIX_ZONE = Code("SIXZONE", _SCHEME, "Six-zone CT severity score (0-24)")
LOBE_SCORE = Code("LOBESCORE", _SCHEME, "Lobe CT severity score (0-25)")

#: SEG segment label -> (our label code, segmented property type code).
_BY_SEGMENT_LABEL = {
    name: (label, prop) for label, name, _category, prop in SEGMENTS
}


def _site(laterality=None) -> hd.sr.FindingSite:
    return hd.sr.FindingSite(anatomic_location=LUNG, laterality=laterality)


def _measurement(name, value, unit, laterality=None) -> hd.sr.Measurement:
    kwargs = {"finding_sites": [_site(laterality)]} if laterality is not None else {}
    return hd.sr.Measurement(name=name, value=float(value), unit=unit, **kwargs)


def segment_volumes_ml(report: dict) -> dict[int, float]:
    """Volume (mL) per label code, from the report (healthy lung = cavity - vessels - lesions)."""
    lung = report["lungs"]["volume_ml"]["total"]
    les = report["lesions"]["volume_ml"]
    healthy = lung - les["vessels"] - les["ggo"] - les["consolidation"]
    return {
        Label.HEALTHY_LUNG: round(max(healthy, 0.0), 3),
        Label.VESSEL: les["vessels"],
        Label.GGO: les["ggo"],
        Label.CONSOLIDATION: les["consolidation"],
    }


def build_sr(report: dict, seg, series_uid: str | None = None) -> hd.sr.Comprehensive3DSR:
    """The SR dataset for ``report`` whose groups reference the segments of ``seg`` (a pydicom SEG dataset)."""
    algorithm = hd.sr.AlgorithmIdentification(name="COViaX " + str(report["lesions"]["engine"]),
                                              version=SOFTWARE_VERSION)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_UID, name=MANUFACTURER, manufacturer_name=MANUFACTURER, model_name=MODEL_NAME,
        ),
    )
    context = hd.sr.ObservationContext(observer_device_context=device)
    source_series = series_uid or seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    groups = _segment_groups(report, seg, algorithm, source_series)
    # The whole lung cavity is no single segment, so it is a TID 1501 group (measurements without an ROI),
    # which TID 1500 allows beside TID 1411 groups. pixelmed's DicomSRValidator reports three "Missing
    # conditional content item" errors on it (TID 1411 rows 5, 7 and 10: Image Region, Referenced Segment,
    # Volume Surface): its TID 1500 rule picks one template for *all* Measurement Group containers at once
    # -- TID 1411 as soon as any group has a Referenced Segment, TID 1501 only when none has -- so in a
    # mixed report it checks the 1501 group against TID 1411. That is the validator's dispatch, not the SR.
    groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="lung cavity"),
        finding_type=LUNG,
        algorithm_id=algorithm,
        finding_sites=[_site()],
        measurements=_whole_lung_measurements(report),
        source_images=[hd.sr.SourceImageForMeasurementGroup(
            referenced_sop_class_uid=seg.SOPClassUID, referenced_sop_instance_uid=seg.SOPInstanceUID)],
    ))
    content = hd.sr.MeasurementReport(observation_context=context, procedure_reported=CT_CHEST, imaging_measurements=groups)
    with no_person_name_warnings():
        sr = hd.sr.Comprehensive3DSR(
            evidence=[seg],
            content=content,
            **new_instance(SERIES_NUMBER),
            is_complete=True,
            is_final=False,  # research output, not the definitive report
            is_verified=False,
            series_description="COViaX measurements (research use only)",
        )
    declare_coding_scheme(sr)
    conform_study_attributes(sr)  # SEG files written before the fix may carry incomplete study references
    return sr


def _segment_groups(report: dict, seg, algorithm, source_series: str) -> list:
    """One TID 1411 group per segment of ``seg``: its volume, and for GGO and consolidation its ratio."""
    volumes = segment_volumes_ml(report)
    ratios = report["ratios_pct"]
    groups = []
    for item in seg.SegmentSequence:
        number = int(item.SegmentNumber)
        found = _BY_SEGMENT_LABEL.get(str(item.SegmentLabel))
        if found is None:
            continue
        label, prop = found
        measurements = [_measurement(VOLUME, volumes[label], ML)]
        if label == Label.GGO:
            measurements.append(_measurement(VR_GGO, ratios["ggo"], PERCENT))
        elif label == Label.CONSOLIDATION:
            measurements.append(_measurement(VR_CS, ratios["consolidation"], PERCENT))
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"segment {number} {item.SegmentLabel}"),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
                source_series=hd.sr.SourceSeriesForSegmentation(source_series),
            ),
            finding_type=prop,
            algorithm_id=algorithm,
            finding_sites=[_site()],
            measurements=measurements,
        ))
    return groups


def _whole_lung_measurements(report: dict) -> list:
    """The lung cavity's measurements: volumes, VRall, opacity percentages and the severity scores."""
    lung = report["lungs"]["volume_ml"]
    whole = [
        _measurement(VOLUME, lung["total"], ML),
        _measurement(VOLUME, lung["right"], ML, codes.SCT.Right),
        _measurement(VOLUME, lung["left"], ML, codes.SCT.Left),
        _measurement(VR_ALL, report["ratios_pct"]["all"], PERCENT),
    ]
    scores = report.get("scores")
    if scores:
        for code, key in ((OPACITY, "opacity_pct"), (HIGH_OPACITY, "high_opacity_pct")):
            values = scores[key]
            if values["overall"] is not None:
                whole.append(_measurement(code, values["overall"], PERCENT))
            for side, lat in (("right", codes.SCT.Right), ("left", codes.SCT.Left)):
                if values[side] is not None:
                    whole.append(_measurement(code, values[side], PERCENT, lat))
        whole.append(_measurement(SIX_ZONE, scores["six_zone"]["total"], NO_UNITS))
        if scores["lobe_score"].get("computed"):
            whole.append(_measurement(LOBE_SCORE, scores["lobe_score"]["total"], NO_UNITS))
    return whole


def declare_coding_scheme(sr) -> None:
    """Declare the private scheme ``99COVIAX`` in CodingSchemeIdentificationSequence (kept with any other item)."""
    items = [item for item in sr.get("CodingSchemeIdentificationSequence", [])
             if item.get("CodingSchemeDesignator") != _SCHEME]
    item = Dataset()
    item.CodingSchemeDesignator = _SCHEME
    item.CodingSchemeName = _SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = _SCHEME_ORGANIZATION
    item.CodingSchemeVersion = "1"
    items.append(item)
    sr.CodingSchemeIdentificationSequence = items


def write_dicom_sr(report: dict, seg, path: str | Path, series_uid: str | None = None) -> Path:
    """Write the SR; ``seg`` is the SEG dataset (pydicom; pixel data not needed) the report's segments are in."""
    sr = build_sr(report, seg, series_uid)
    path = Path(path)
    sr.save_as(path)
    return path
