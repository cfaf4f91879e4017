"""Names vulture cannot see used: called by name from outside the code it reads (entry points, gRPC,
tests, the public SDK) or required by a protocol's signature. Read by tests/test_dead_code.py; never
imported. Add a name here only with the reason next to it."""

# ruff: noqa
# pyflakes: disable
_ = None

# public SDK (clients use them; tests/test_service_api.py too)
_.segment_array
_.submit_batch
_.was_sent  # sender's ledger, tests/test_dicom_sender.py
_.wait_idle  # tests/test_dicom_sender.py
# `coviax` sub-commands: entry points of the group coviax.commands (pyproject.toml)
_.add_eval_parser
_.add_phantom_parser
_.add_serve_parser
_.add_stats_parser
_.add_cohort_parser
_.add_compare_parser
_.add_train_parser
# gRPC calls these by name
_.intercept_service
# used by tests only, on purpose (an in-process server, a synchronous store call, config inspection)
_.ServerThread
_.call_sync
_.load_tokens
_.pids
_.voxel_counts  # LungMask: tests/test_lungs.py, tests/test_realdata.py
_.write_outputs  # coviax.pipeline.write_outputs, the public name of an already made report's outputs: tests/test_report_pages.py
# protocol signatures: context managers, interceptors, cache keys
_.__enter__
_.__exit__
_.tb
_.self_inner
_.request_or_iterator
_.mtime_ns
