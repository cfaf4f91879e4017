"""A phantom on disk: a DICOM CT series (new UIDs, nothing copied from the source's headers),
image.nii.gz, labels.nii.gz and truth.json."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path

import numpy as np

from coviax.io import Volume
from coviax_research.phantom import Phantom


def write_phantom(phantom: Phantom, out_dir) -> dict[str, Path]:
    """Write the phantom: a DICOM CT series, image.nii.gz, labels.nii.gz and truth.json.

    The DICOM series has new UIDs, PatientName ``COVIAX^PHANTOM``, PatientID
    ``PHANTOM-<seed>`` and nothing copied from the source's headers;
    :func:`coviax.io.read_scan` reads it back to the same HU and geometry.
    Returns the paths by name (``dicom``, ``image``, ``labels``, ``truth``).
    """
    import SimpleITK as sitk

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dicom_dir = out / "dicom"
    write_dicom_series(phantom.volume, dicom_dir, seed=int(phantom.truth.get("seed", 0)),
                       description=f"COViaX hybrid phantom seed {phantom.truth.get('seed')} "
                                   f"{phantom.truth.get('severity')}")
    image = out / "image.nii.gz"
    labels = out / "labels.nii.gz"
    sitk.WriteImage(phantom.volume.to_sitk(), str(image), useCompression=True)
    sitk.WriteImage(phantom.volume.to_sitk(phantom.labels), str(labels), useCompression=True)
    truth = out / "truth.json"
    truth.write_text(json.dumps(phantom.truth, indent=2) + "\n")
    return {"dicom": dicom_dir, "image": image, "labels": labels, "truth": truth}


def write_dicom_series(volume: Volume, folder, seed: int, description: str = "COViaX hybrid phantom") -> list[Path]:
    """One CT Image Storage file per slice, uint16 stored values with RescaleIntercept -1024."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    common = _series_elements(volume, seed, description)
    d = volume.direction
    normal = np.cross(d[:, 0], d[:, 1])
    paths = []
    for k in range(volume.shape[0]):
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        for keyword, value in common.items():
            setattr(ds, keyword, value)
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        position = volume.index_to_patient([k, 0, 0])
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.SliceLocation = _ds(np.dot(position, normal))
        stored = (volume.hu[k].astype(np.int32) + 1024).clip(0, 65535).astype("<u2")
        ds.PixelData = stored.tobytes()
        path = folder / f"CT{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _series_elements(volume: Volume, seed: int, description: str) -> dict[str, object]:
    """The elements every slice of the series shares, by keyword: new UIDs, the phantom's identity
    (nothing of the source's headers), the grid and the pixel format."""
    from pydicom.uid import CTImageStorage, generate_uid

    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    d = volume.direction
    iop = [float(v) for v in np.concatenate([d[:, 0], d[:, 1]])]
    return {
        "SpecificCharacterSet": "ISO_IR 100", "ImageType": ["DERIVED", "SECONDARY", "AXIAL"],
        "SOPClassUID": CTImageStorage,
        "StudyDate": date, "SeriesDate": date, "ContentDate": date,
        "StudyTime": time, "SeriesTime": time, "ContentTime": time,
        "AccessionNumber": "", "Modality": "CT", "Manufacturer": "COViaX hybrid phantom",
        "ReferringPhysicianName": "", "StudyDescription": "COViaX hybrid phantom (research use only)",
        "SeriesDescription": description[:64],
        "PatientName": "COVIAX^PHANTOM", "PatientID": f"PHANTOM-{seed}", "PatientBirthDate": "", "PatientSex": "",
        "PatientIdentityRemoved": "YES",
        "DeidentificationMethod": "COViaX hybrid phantom: pixel data only, no source header copied",
        "BodyPartExamined": "CHEST",
        "SliceThickness": _ds(volume.spacing_zyx[0]), "SpacingBetweenSlices": _ds(volume.spacing_zyx[0]),
        "StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(), "StudyID": "PHANTOM",
        "SeriesNumber": 1,
        "ImageOrientationPatient": [_ds(v) for v in iop],
        "FrameOfReferenceUID": generate_uid(), "PositionReferenceIndicator": "",
        "SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2",
        "Rows": volume.shape[1], "Columns": volume.shape[2],
        "PixelSpacing": [_ds(volume.spacing_zyx[1]), _ds(volume.spacing_zyx[2])],
        "BitsAllocated": 16, "BitsStored": 16, "HighBit": 15, "PixelRepresentation": 0,
        "WindowCenter": "-600", "WindowWidth": "1500",
        "RescaleIntercept": "-1024", "RescaleSlope": "1", "RescaleType": "HU",
    }


def _ds(value: float) -> str:
    """A Decimal String of at most 16 characters, as exact as it allows."""
    from pydicom.valuerep import format_number_as_ds

    value = float(value)
    if abs(value) < 1e-9:
        value = 0.0
    return format_number_as_ds(value)
