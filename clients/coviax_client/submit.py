"""A complete series through the service and back (the ``submit`` of the DICOM listener):
:func:`sdk_submitter` runs it with the SDK, writes the outputs, gives the DICOM results the patient's
identity back when the images left de-identified or pseudonymised (:func:`reidentify`), numbers a
re-analysis's series apart (:func:`renumber_series`) and queues the results for the PACS."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable

from coviax_client.listener import content_key

log = logging.getLogger("coviax_client.listener")


#: The DICOM outputs a job can return, in the order they go back to the PACS.
DICOM_RESULTS = ("seg.dcm", "measurements_sr.dcm", "report_sc.dcm")

#: Patient and study attributes that ``--deidentify`` blanks or removes before the images leave, and that
#: the outputs (which copy them from the de-identified images) get back from the source before they go to
#: the PACS -- so they join the patient's study there instead of a second, empty patient.
IDENTITY = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientBirthTime", "PatientSex",
    "OtherPatientIDsSequence", "PatientAge", "PatientSize", "PatientWeight", "PatientComments", "EthnicGroup",
    "ReferringPhysicianName", "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "StudyDescription",
    "PhysiciansOfRecord", "NameOfPhysiciansReadingStudy",
)


def reidentify(paths: Iterable[Path], source: Path) -> int:
    """Give the DICOM files ``paths`` the patient and study attributes of the instance ``source``, in place.

    For results computed from de-identified images: the Study Instance UID was kept, so with the identity
    back they land in the right study. PatientIdentityRemoved and DeidentificationMethod are dropped. Refuses
    (ValueError) a file whose StudyInstanceUID differs from the source's. Returns the number of files changed.
    """
    import pydicom

    src = pydicom.dcmread(source, stop_before_pixels=True)
    changed = 0
    for path in paths:
        ds = pydicom.dcmread(path)
        if str(ds.get("StudyInstanceUID", "")) != str(src.get("StudyInstanceUID", "")):
            raise ValueError(f"{path.name}: its study is not the source study; not re-identified")
        for keyword in IDENTITY:
            if keyword in src:
                ds[keyword] = src[keyword]
            elif keyword in ds and not ds[keyword].value:
                del ds[keyword]  # absent in the source too: no empty leftover
        for keyword in ("PatientIdentityRemoved", "DeidentificationMethod"):
            if keyword in ds:
                del ds[keyword]
        tmp = path.with_name(path.name + ".part")
        ds.save_as(tmp, enforce_file_format=True)
        os.replace(tmp, path)
        changed += 1
    return changed


def analysis_version(out: Path, content: str) -> int:
    """1 for the first analysis of a series (in ``out``), 2 for the first with other content, ... (``versions.txt``)."""
    versions_file = out / "versions.txt"
    seen = versions_file.read_text().split() if versions_file.is_file() else []
    if content not in seen:
        seen.append(content)
        versions_file.write_text("\n".join(seen) + "\n")
    return seen.index(content) + 1


def renumber_series(paths: Iterable[Path], version: int) -> None:
    """SeriesNumber + 10 per re-analysis (SEG 9901 -> 9911 -> 9921 ...), so a changed re-push does not add a
    second series with the same number to the study in the PACS. Version 1 keeps the numbers as written."""
    import pydicom

    if version <= 1:
        return
    for path in paths:
        ds = pydicom.dcmread(path)
        if "SeriesNumber" in ds and ds.SeriesNumber is not None:
            ds.SeriesNumber = int(ds.SeriesNumber) + 10 * (version - 1)
            tmp = path.with_name(path.name + ".part")
            ds.save_as(tmp, enforce_file_format=True)
            os.replace(tmp, path)


def sdk_submitter(client, deidentify: bool = False, sender=None, pseudonymiser=None, **options) -> Callable[..., None]:
    """A ``submit`` for :class:`DicomListener` that runs the scan through ``client`` and downloads the outputs.

    With ``sender`` (a :class:`coviax_client.sender.ResultSender`, or a list of them: C-STORE and STOW-RS)
    the SEG, SR and SC are queued to go back to the PACS. With ``deidentify`` the images leave without
    patient attributes (:func:`coviax_client.files.deidentify_dataset`; UIDs kept) and the SEG, SR and SC
    get them back from the received originals (:func:`reidentify`) before anything is written for the PACS.
    With ``pseudonymiser`` (:class:`coviax_client.pseudonym.Pseudonymiser`) the images leave with
    consistent pseudonyms and replaced UIDs, and the results are mapped back the same way. The idempotency
    key is the series key plus the content key: the same images give the same job, changed images a new one.
    Both are plain hashes of original UIDs; under ``pseudonymiser`` the service gets keyed stand-ins
    (:meth:`~coviax_client.pseudonym.Pseudonymiser.reference`) for them and for ``client_ref``.
    """
    if deidentify and pseudonymiser is not None:
        raise ValueError("choose --deidentify or --pseudonymise, not both")

    def submit(folder: Path, key: str, out: Path, content: str | None = None) -> None:
        import tempfile

        if content is None:
            content = content_key(folder)
        upload, scratch = folder, None
        client_ref, content_ref = key, content[:32]
        if pseudonymiser is not None:
            scratch = Path(tempfile.mkdtemp(prefix=".pseudonymised-", dir=out))
            pseudonymiser.save_mapping(key, pseudonymiser.copy_series(folder, scratch))
            upload = scratch
            # the series and content keys are plain hashes of original UIDs: keyed stand-ins leave instead
            client_ref = "series-" + pseudonymiser.reference("series", key)[:16]
            content_ref = pseudonymiser.reference("content", content)
        try:
            result = client.segment(upload, idempotency_key=f"listener-{client_ref}-{content_ref}",
                                    client_ref=client_ref, deidentify=deidentify, **options)
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        client.download_all(result, out)
        results = [out / name for name in DICOM_RESULTS if (out / name).is_file()]
        if results and (deidentify or pseudonymiser is not None):
            # the service saw blanked or pseudonymous attributes; the received originals still have them
            source = next(p for p in sorted(folder.iterdir()) if p.suffix == ".dcm")
            if pseudonymiser is not None:
                pseudonymiser.reidentify(results, key, source)
            else:
                reidentify(results, source)
        if pseudonymiser is not None:
            _unpseudonymise_report(out / "report.json", pseudonymiser.load_mapping(key))
        renumber_series(results, analysis_version(out, content))
        (out / "job.txt").write_text(f"{result.job_id}\n")
        log.info("%s done: job %s, VRall %.2f %%", key, result.job_id, result.ratios_pct["all"])
        for one in (sender if isinstance(sender, (list, tuple)) else [sender] if sender is not None else []):
            queued = one.enqueue(results)
            log.info("%s: %d result instance(s) queued for %s", key, queued, one.node)

    return submit


def _unpseudonymise_report(path: Path, uid_map: dict[str, str]) -> None:
    """report.json names the input series by its (pseudonymous) UID: put the original back."""
    import json

    if not path.is_file():
        return
    report = json.loads(path.read_text())
    uid = (report.get("input") or {}).get("series_uid")
    if uid in uid_map:
        report["input"]["series_uid"] = uid_map[uid]
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, path)
