"""Stage 5 of the pipeline: what leaves the core.

- :mod:`coviax.export.report` -- ``report.json`` (versioned schema) and the terminal table;
- :mod:`coviax.export.nifti` -- ``labels.nii.gz`` in the source geometry;
- :mod:`coviax.export.dicom.seg` -- a DICOM SEG (highdicom) referencing the source series;
- :mod:`coviax.export.montage` -- a PNG montage of the most affected slices.
"""
