"""Jobs: admission and limits, uploads to disk, the shared slice engine, the worker pool, resume, retention.

One module per responsibility (docs/SERVICE.md, "How a scan flows through the server"):

- :mod:`.model`: :class:`JobState`, :class:`JobRequest`, :class:`JobOptions` (validated once), :class:`LiveJob`;
- :mod:`.admission`: a Header becomes a job, or the job its idempotency key names; slots are reserved here;
- :mod:`.uploads`: DICOM instances and raw slices to disk, checked against the limits;
- :mod:`.slices`: slices to the shared slice engine while a scan arrives (decoded in memory-limited
  processes, :mod:`coviax_service.decoding`);
- :mod:`.runner`: the 3D step in the worker pool; ending jobs (FAILED, CANCELLED);
- :mod:`.scheduler`: slots, jobs waiting for one, what a restart finds;
- :mod:`.retention`: artifacts removed by age and total size;
- :mod:`.manager`: :class:`JobManager`, which wires them together for the servicer.

Nothing in this package imports gRPC or protobuf: errors are the domain exceptions of
:mod:`coviax_service.errors`, events and query answers are plain data, and the servicer
converts them.
"""

from coviax_service.jobs.manager import JobManager
from coviax_service.jobs.model import JobOptions, JobRecord, JobRequest, JobState, LiveJob
from coviax_service.decoding import decode_instance

__all__ = ["JobManager", "JobOptions", "JobRecord", "JobRequest", "JobState", "LiveJob", "decode_instance"]
