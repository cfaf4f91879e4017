"""``coviax cohort``: a trial's cohort of scans on Ray, with QC, follow-up change and a report.

==============  ============================================================================
``manifest``    the CSV manifest read and checked (columns, rows, files, duplicates)
``state``       one folder per scan: attempts, last error, the completion marker (resume)
``task``        one scan analysed inside a Ray worker (``pipeline.run`` + ``coviax.qc``)
``runner``      Ray started or joined, tasks submitted, progress with scans/s and ETA
``table``       the cohort table (CSV, Parquet) with the change between timepoints
``report``      ``coviax cohort report``: one HTML page (and a PDF) for the data manager
``demo``        ``make cohort-demo``: a cohort of phantoms from several sources
``cli``         ``coviax cohort run|report``; ``compare_cli``: ``coviax compare``
==============  ============================================================================

The core (``coviax``) knows nothing of Ray; the QC checks (``coviax.qc``) and the follow-up change
(``coviax.change``) are core functions on arrays that this shell calls.
"""
