"""What the client sends: the DICOM instances of a folder, zip or file list, optionally de-identified.

De-identification (``--deidentify``) happens on the client, before a byte
leaves the machine. It keeps everything the analysis needs (geometry, pixel
data, rescale, modality, UIDs) and, at every nesting depth (inside sequences
too): empties every person name (VR PN) and every date and time (VR DA, DT,
TM), empties the Type 2 identifiers in :data:`BLANKED`, removes the attributes
in :data:`REMOVED` -- the patient-identifying and free-text attributes of the
DICOM basic confidentiality profile (PS3.15 Annex E) that CT headers commonly
carry -- and removes every private tag. Documented in docs/SERVICE.md
"De-identification".

Written here rather than with a de-identification library (dicognito, deid):
those replace UIDs with new ones, and the DICOM SEG and SR this service
returns must reference the source instances so that they land in the
hospital's study in PACS; they also put made-up names in, where an emptied
name is plainer for a trial's audit.

Kept on purpose (a known limit, said in the docs): the Study/Series/SOP
Instance and Frame of Reference UIDs (the DICOM SEG output must reference its
source images), and acquisition parameters (kVp, kernel, slice thickness).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import pydicom

#: Type 2 attributes (must be present, may be empty): emptied, not removed, so the file stays valid.
BLANKED = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "ReferringPhysicianName",
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
)

#: Removed when present.
REMOVED = (
    "PatientAge", "PatientWeight", "PatientSize", "PatientAddress", "PatientTelephoneNumbers",
    "PatientMotherBirthName", "PatientBirthTime", "PatientBirthName", "OtherPatientIDs",
    "OtherPatientIDsSequence", "OtherPatientNames", "MilitaryRank", "BranchOfService", "MedicalRecordLocator",
    "EthnicGroup", "Occupation", "AdditionalPatientHistory", "PatientComments", "PatientReligiousPreference",
    "PatientInsurancePlanCodeSequence", "CountryOfResidence", "RegionOfResidence", "IssuerOfPatientID",
    "MedicalAlerts", "Allergies", "PregnancyStatus", "SmokingStatus", "ResponsiblePerson",
    "ResponsibleOrganization", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "StationName", "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "OperatorsName",
    "PhysiciansOfRecord", "RequestingPhysician", "ScheduledPerformingPhysicianName", "RequestAttributesSequence",
    "StudyDescription", "SeriesDescription", "ImageComments", "RequestedProcedureDescription",
    "PerformedProcedureStepDescription", "PerformedProcedureStepID", "ScheduledProcedureStepDescription",
    "AdmissionID", "AdmittingDiagnosesDescription", "DeviceSerialNumber", "ProtocolName",
    "ReferencedPatientSequence", "ReferencedStudySequence", "ReferencedPerformedProcedureStepSequence",
    "InstanceCreationDate", "InstanceCreationTime", "SeriesDate", "SeriesTime", "AcquisitionDate",
    "AcquisitionTime", "ContentDate", "ContentTime", "AcquisitionDateTime", "PerformedProcedureStepStartDate",
    "PerformedProcedureStepStartTime",
)


#: Value representations emptied wherever they occur: names, and dates and times (quasi-identifiers).
BLANKED_VRS = ("PN", "DA", "DT", "TM")

_BLANKED_TAGS = frozenset(pydicom.datadict.tag_for_keyword(k) for k in BLANKED)
_REMOVED_TAGS = frozenset(pydicom.datadict.tag_for_keyword(k) for k in REMOVED)


def deidentify_dataset(ds: pydicom.Dataset) -> pydicom.Dataset:
    """Blank/remove the identifying attributes in place, nested sequences included (see module docstring);
    returns ``ds``. The file meta information (transfer syntax, SOP UIDs) is left as it is."""
    ds.remove_private_tags()  # recursive in pydicom

    def clean(dataset: pydicom.Dataset, element: pydicom.DataElement) -> None:
        if element.tag in _REMOVED_TAGS:
            del dataset[element.tag]
        elif element.tag in _BLANKED_TAGS or element.VR in BLANKED_VRS:
            element.value = ""

    ds.walk(clean)  # visits the items of every sequence, at any depth
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = "coviax-client --deidentify (basic profile subset, UIDs kept)"
    return ds


def deidentify_bytes(data: bytes) -> bytes:
    """De-identify one DICOM Part 10 file given as bytes; non-DICOM bytes are returned unchanged."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except Exception:  # not DICOM: the server ignores or rejects it with a message
        return data
    deidentify_dataset(ds)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=False)
    return out.getvalue()


@dataclass
class Instance:
    """One file to send: ``name`` for messages, ``read()`` gives its bytes."""

    name: str
    read: Callable[[], bytes]
    size: int


def collect_instances(source, deidentify: bool = False) -> list[Instance]:
    """The files of ``source``: a folder (recursive), a .zip, one file, or a list of files.

    Raises
    ------
    FileNotFoundError
        if a path does not exist; ValueError if nothing is found.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or folder")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
            instances = [_file_instance(p) for p in files]
        elif path.suffix.lower() == ".zip":
            instances = _zip_instances(path)
        else:
            instances = [_file_instance(path)]
    else:
        instances = []
        for item in source:
            p = Path(item)
            if not p.is_file():
                raise FileNotFoundError(f"{p}: no such file")
            instances.append(_file_instance(p))
    if not instances:
        raise ValueError(f"{source}: no files to send")
    if deidentify:
        instances = [Instance(i.name, _deid_reader(i.read), i.size) for i in instances]
    return instances


def _file_instance(path: Path) -> Instance:
    return Instance(str(path), path.read_bytes, path.stat().st_size)


def _zip_instances(path: Path) -> list[Instance]:
    with zipfile.ZipFile(path) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]

    def reader(name: str) -> Callable[[], bytes]:
        def read() -> bytes:
            with zipfile.ZipFile(path) as zf:
                return zf.read(name)

        return read

    return [Instance(f"{path}:{i.filename}", reader(i.filename), i.file_size) for i in sorted(infos, key=lambda i: i.filename)]


def _deid_reader(read: Callable[[], bytes]) -> Callable[[], bytes]:
    return lambda: deidentify_bytes(read())


def chunks(data: bytes, size: int) -> Iterable[tuple[bytes, bool]]:
    """(piece, last) over ``data``; an empty file is one empty last piece."""
    if not data:
        yield b"", True
        return
    for start in range(0, len(data), size):
        yield data[start : start + size], start + size >= len(data)
