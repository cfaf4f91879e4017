"""The COViaX gRPC service (``coviax serve``): one shared lesion engine, jobs in SQLite.

Research use only. COViaX is not a medical device.

Modules (docs/SERVICE.md describes the API, configuration, metrics and errors):

- :mod:`coviax_service.config`: settings from flags and ``COVIAX_*`` environment variables.
- :mod:`coviax_service.server`: builds and runs the grpc.aio server (TLS, auth, health,
  reflection, metrics, drain on SIGTERM).
- :mod:`coviax_service.servicer`: the ``coviax.v1.Coviax`` RPCs.
- :mod:`coviax_service.jobs`: admission, limits, uploads, the job lifecycle, resume.
- :mod:`coviax_service.inference`: the batching queue in front of the shared engine.
- :mod:`coviax_service.worker`: the 3D post-processing run in worker processes.
- :mod:`coviax_service.store`: the SQLite job store.
- :mod:`coviax_service.errors`: exceptions -> gRPC status codes, in one place.
"""
