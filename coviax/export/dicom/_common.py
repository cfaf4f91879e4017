"""What the three DICOM writers (SEG, SR, Secondary Capture) share: the device identity and the arguments
of a new instance, the guard that keeps highdicom's warnings about the source's PatientName out of the
logs, and the repair of the study references the source passes on."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

from pydicom.uid import generate_uid

import coviax

#: The device identity every COViaX object carries.
MANUFACTURER = "COViaX"
MODEL_NAME = "COViaX (research use only)"
SOFTWARE_VERSION = coviax.__version__
#: Device Observer UID: the same for every COViaX installation and run (it identifies the software).
DEVICE_UID = generate_uid(entropy_srcs=["COViaX device observer"])


def new_instance(series_number: int) -> dict:
    """The arguments every COViaX object's highdicom constructor takes alike: a new series, its number,
    a new instance (number 1) and the manufacturer."""
    import highdicom as hd

    return {"series_instance_uid": hd.UID(), "series_number": series_number, "sop_instance_uid": hd.UID(),
            "instance_number": 1, "manufacturer": MANUFACTURER}


@contextlib.contextmanager
def no_person_name_warnings() -> Iterator[None]:
    """Silence highdicom's warning about the format of the source's PatientName: it quotes the name in
    the message, and a patient name must never reach a log."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
        yield


def conform_study_attributes(ds) -> None:
    """Drop the incomplete ReferencedStudySequence items the source CT passed on to ``ds`` (a COViaX output).

    ReferencedStudySequence is type 3; each of its items needs ReferencedSOPClassUID and
    ReferencedSOPInstanceUID (type 1, SOP Instance Reference Macro). Some sources -- the bundled CT among
    them -- have items with the instance UID only. The class cannot be known, so such an item is dropped
    rather than copied with its defect (dciodvfy: "Missing attribute Type 1 Required
    Element=<ReferencedSOPClassUID>"); the sequence goes when no item is left.
    """
    refs = ds.get("ReferencedStudySequence")
    if refs is None:
        return
    kept = [item for item in refs if item.get("ReferencedSOPClassUID") and item.get("ReferencedSOPInstanceUID")]
    if kept:
        ds.ReferencedStudySequence = kept
    else:
        del ds.ReferencedStudySequence
