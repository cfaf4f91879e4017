"""Consistent pseudonymisation for the listener (``--pseudonymise SECRET``), reversible only on this machine.

What leaves for the service, per DICOM PS3.15 Annex E (basic application level confidentiality profile),
by action code:

- **X / Z** (remove / empty): everything :func:`coviax_client.files.deidentify_dataset` removes or empties --
  every person name, date and time at any depth, the patient-identifying and free-text attributes CT
  headers carry, private tags.
- **D** (dummy): PatientID becomes ``COVIAX-`` + 16 hex digits and PatientName ``COVIAX^`` + the same
  digits: an HMAC-SHA-256 of the original PatientID under the local secret, so one patient gets one
  pseudonym across studies and pushes, and nobody without the secret can link it back.
- **U** (UIDs): every UID value that is not a DICOM-defined one (``1.2.840.10008.*``: SOP classes,
  transfer syntaxes) -- Study, Series, SOP Instance, Frame of Reference, referenced instances, in the file
  meta too -- becomes ``2.25.`` + the HMAC as a decimal integer: consistent, so references between
  instances still hold.
- **K** (keep): pixel data, geometry, rescale, modality, acquisition parameters (what the analysis needs).

The reverse mapping (pseudonymous UID -> original UID) of each series is written next to the listener's
state, in a folder only the owner can read (0700, files 0600); the secret file likewise (0600, created
on first use). :func:`Pseudonymiser.reidentify` maps the UIDs in the results back (the SEG then
references the original instances, the SR the original SEG) and restores the patient and study
attributes from the received original, before anything goes to the PACS.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Iterable

import pydicom

from coviax_client.files import deidentify_dataset

DICOM_ROOT = "1.2.840.10008."
#: DeidentificationMethod (LO, at most 64 characters).
METHOD = "coviax-client --pseudonymise (PS3.15 E basic subset, HMAC)"


class Pseudonymiser:
    def __init__(self, secret_file, mapping_dir):
        self.secret_file = Path(secret_file)
        self.mapping_dir = Path(mapping_dir)
        if not self.secret_file.exists():
            self.secret_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
        mode = self.secret_file.stat().st_mode & 0o077
        if mode:
            raise ValueError(f"{self.secret_file}: the pseudonymisation secret is readable by others "
                             f"(mode {oct(self.secret_file.stat().st_mode & 0o777)}); chmod 600 it")
        text = self.secret_file.read_text().strip()
        if len(text) < 32:
            raise ValueError(f"{self.secret_file}: the secret must be at least 32 characters (e.g. 64 hex digits)")
        self._key = text.encode()
        # only now: a refused secret leaves no mapping folder behind
        self.mapping_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.mapping_dir, 0o700)

    # ------------------------------------------------------------ values

    def _digest(self, kind: str, value: str) -> str:
        return hmac.new(self._key, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()

    def patient_pseudonym(self, patient_id: str) -> str:
        return self._digest("patient", patient_id)[:16]

    def reference(self, kind: str, value: str) -> str:
        """A keyed stand-in (32 hex digits) for a value derived from original identifiers (the listener's
        series key, the content key over the original SOP Instance UIDs): the service gets this for its
        client_ref and idempotency key, so whoever holds the original UIDs cannot link its jobs to them."""
        return self._digest(f"ref-{kind}", value)[:32]

    def uid(self, value: str) -> str:
        return "2.25." + str(int(self._digest("uid", value)[:32], 16))

    # ------------------------------------------------------------ datasets

    def pseudonymise(self, ds: pydicom.Dataset, uid_map: dict[str, str]) -> pydicom.Dataset:
        """Pseudonymise ``ds`` in place (file meta included); add {pseudonymous UID: original} to ``uid_map``."""
        pseudonym = self.patient_pseudonym(str(ds.get("PatientID", "") or ""))
        deidentify_dataset(ds)
        ds.PatientID = "COVIAX-" + pseudonym
        ds.PatientName = "COVIAX^" + pseudonym

        def replace(dataset, element):
            if element.VR != "UI" or element.value in (None, ""):
                return
            values = element.value if element.VM > 1 else [element.value]
            new = []
            for value in values:
                value = str(value)
                if value.startswith(DICOM_ROOT):
                    new.append(value)
                else:
                    p = self.uid(value)
                    uid_map[p] = value
                    new.append(p)
            element.value = new if element.VM > 1 else new[0]

        ds.walk(replace)
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.DeidentificationMethod = METHOD
        ds.LongitudinalTemporalInformationModified = "REMOVED"
        return ds

    def copy_series(self, folder: Path, target: Path) -> dict[str, str]:
        """Write pseudonymised copies of the ``*.dcm`` of ``folder`` into ``target``; returns the UID map."""
        target.mkdir(parents=True, exist_ok=True)
        uid_map: dict[str, str] = {}
        for path in sorted(folder.glob("*.dcm")):
            ds = pydicom.dcmread(path)
            self.pseudonymise(ds, uid_map)
            ds.save_as(target / path.name, enforce_file_format=True)
        return uid_map

    # ------------------------------------------------------------ mapping

    def save_mapping(self, key: str, uid_map: dict[str, str]) -> Path:
        path = self.mapping_dir / f"{key}.json"
        tmp = path.with_name(path.name + ".part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(uid_map, f)
        os.replace(tmp, path)
        return path

    def load_mapping(self, key: str) -> dict[str, str]:
        path = self.mapping_dir / f"{key}.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"no pseudonym mapping for {key} in {self.mapping_dir}; cannot re-identify") from None

    def reidentify(self, paths: Iterable[Path], key: str, source: Path) -> int:
        """Map the pseudonymous UIDs in ``paths`` back to the originals and restore the identity from ``source``."""
        from coviax_client.submit import reidentify as restore_identity

        uid_map = self.load_mapping(key)
        paths = list(paths)
        for path in paths:
            ds = pydicom.dcmread(path)

            def back(dataset, element):
                if element.VR != "UI" or element.value in (None, ""):
                    return
                if element.VM > 1:
                    element.value = [uid_map.get(str(v), str(v)) for v in element.value]
                else:
                    element.value = uid_map.get(str(element.value), str(element.value))

            ds.walk(back)
            for keyword in ("LongitudinalTemporalInformationModified",):
                if keyword in ds:
                    del ds[keyword]
            tmp = path.with_name(path.name + ".part")
            ds.save_as(tmp, enforce_file_format=True)
            os.replace(tmp, path)
        return restore_identity(paths, source)
