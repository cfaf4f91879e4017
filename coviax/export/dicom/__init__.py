"""The DICOM objects COViaX writes, one module an object in highdicom's package-per-object style:

- :mod:`coviax.export.dicom.seg` -- the lesion labels as a DICOM Segmentation referencing the source series;
- :mod:`coviax.export.dicom.sr` -- the measurements as a Comprehensive 3D SR (TID 1500) referencing the SEG;
- :mod:`coviax.export.dicom.sc` -- the report page as a Secondary Capture image;
- :mod:`coviax.export.dicom._common` -- what the three share: the device identity and the arguments of a
  new instance, the guard that keeps the source's PatientName out of the logs, the study-reference repair.
"""
