"""What a job is: its states, its options (validated once), the request that makes it, its live state.

Nothing here knows gRPC or protobuf: the servicer converts messages to and from these types
(:mod:`coviax_service.convert`).
"""

from __future__ import annotations

import asyncio
import enum
import time
from dataclasses import asdict, dataclass, field

from coviax.pipeline import SegmentOptions
from coviax_service.errors import JobCancelled


class JobState(enum.StrEnum):
    """The life of a job (the names are those of ``coviax.v1.JobState`` and of the store's rows).

    ::

        RECEIVING --(upload complete, fsync'ed)--> QUEUED --(slot)--> RUNNING --> DONE | FAILED
             \\__________________ CANCELLED (CancelJob, client gone) ___________/
    """

    RECEIVING = "RECEIVING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    @property
    def terminal(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class JobRequest:
    """A scan's Header: the options asked for and the client's references (``None`` = not sent)."""

    lungs: str = ""
    engine: str = ""
    outputs: tuple[str, ...] = ()
    max_blobs: int | None = None
    series_uid: str = ""
    device: str = ""
    idempotency_key: str = ""
    study_label: str = ""
    client_ref: str = ""
    batch_id: str = ""
    expected_instances: int | None = None
    tenant: str = ""  # whose job it is (the caller's token); jobs are visible to their tenant only

    @property
    def scoped_key(self) -> str:
        """The idempotency key as stored: one tenant's key never names another tenant's job."""
        if not self.idempotency_key or not self.tenant:
            return self.idempotency_key
        return f"{self.tenant}\x1f{self.idempotency_key}"


#: Length limits of the client's free-text fields.
TEXT_LIMITS = (("idempotency_key", 128), ("study_label", 256), ("client_ref", 256), ("batch_id", 128))


@dataclass(frozen=True)
class JobOptions:
    """How a job is analysed: the request resolved against the server's defaults.

    Validated once, when made (:meth:`resolve`); stored as JSON in the job's row
    (:meth:`to_dict`, :meth:`from_dict`) and handed to the worker as it is.
    """

    lungs: str
    engine: str
    outputs: tuple[str, ...]
    max_blobs: int
    series_uid: str = ""
    study_label: str = ""
    device: str = "cpu"
    model: str = ""
    model_notes: tuple[str, ...] = ()

    def segment_options(self) -> SegmentOptions:
        """The core's options for :func:`coviax.pipeline.run`."""
        return SegmentOptions(
            lungs=self.lungs, engine=self.engine, device=self.device, series_uid=self.series_uid or None,
            outputs=tuple(self.outputs), max_blobs=self.max_blobs, study_label=self.study_label or None,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["outputs"], d["model_notes"] = list(self.outputs), list(self.model_notes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "JobOptions":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        known["outputs"] = tuple(known.get("outputs", ()))
        known["model_notes"] = tuple(known.get("model_notes", ()))
        return cls(**known)

    @classmethod
    def resolve(cls, request: JobRequest, engine: str, lungs: str, device: str, model: str,
                model_notes: tuple[str, ...] = ()) -> "JobOptions":
        """The options of ``request`` on a server running ``engine`` with default ``lungs``.

        Raises the core's OptionError (unknown lung method, output, max_blobs out of range):
        :meth:`SegmentOptions.validate` is the one check of the values.
        """
        options = cls(
            lungs=request.lungs or lungs, engine=engine,
            outputs=tuple(request.outputs) or SegmentOptions.outputs,
            max_blobs=SegmentOptions.max_blobs if request.max_blobs is None else int(request.max_blobs),
            series_uid=request.series_uid, study_label=request.study_label, device=device, model=model,
            model_notes=tuple(model_notes),
        )
        options.segment_options().validate()
        return options


@dataclass(frozen=True)
class Progress:
    """Counters of a job in progress (the Progress event)."""

    slices_received: int
    slices_segmented: int
    stage: str
    expected_slices: int
    bytes_received: int


@dataclass
class Upload:
    """What is being received of a job's scan."""

    kind: str = ""  # "dicom" | "raw"
    open_index: int | None = None
    open_file: object | None = None
    done_indices: set = field(default_factory=set)
    raw_geometry: dict | None = None


@dataclass
class LiveJob:
    """A job this process is working on (its row is in the store too)."""

    job_id: str
    options: JobOptions
    batch_id: str = ""
    client_ref: str = ""
    expected: int = 0
    streaming: bool = False  # a Segment stream: the job holds a slot from its Header on
    state: JobState = JobState.RECEIVING
    stage: str = "upload"
    received: int = 0
    bytes: int = 0
    segmented: int = 0
    error_code: str = ""
    error_message: str = ""
    started: float = field(default_factory=time.perf_counter)
    upload_complete: bool = False
    upload: Upload = field(default_factory=Upload)
    # slice-engine predictions, keyed by SOPInstanceUID (or "z:INDEX"); tasks still predicting
    predictions: dict = field(default_factory=dict)
    ambiguous: set = field(default_factory=set)
    pending: set = field(default_factory=set)
    # bookkeeping
    subscribers: list = field(default_factory=list)
    holds_slot: bool = False
    extra: int = 0  # slices this job counts in the queue's depth outside the queue itself
    task: asyncio.Task | None = None
    worker_future: object | None = None
    attempt: int = 0

    @property
    def terminal(self) -> bool:
        return self.state.terminal

    def advance(self, state: JobState) -> None:
        """Move on to ``state`` (QUEUED, RUNNING, DONE), unless the job has ended meanwhile.

        Every step of a job awaits something (a disk write, a row, the worker), and a cancel can end
        the job during any of them. A step that then carried on would bring the CANCELLED job back
        to life, run it, and count it twice (once CANCELLED, once OK). Raises
        :class:`~coviax_service.errors.JobCancelled` instead.
        """
        if self.terminal:
            raise JobCancelled(f"the job ended ({self.state.lower()}) before it became {state.lower()}")
        self.state = state

    # ---- events: ("progress", Progress) | ("done", job_id, report, artifact rows) | ("error", code, message)

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue()
        self.subscribers.append(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        if q in self.subscribers:
            self.subscribers.remove(q)

    def emit(self, event: tuple) -> None:
        for q in self.subscribers:
            q.put_nowait(event)

    def progress(self) -> Progress:
        return Progress(slices_received=self.received, slices_segmented=self.segmented, stage=self.stage,
                        expected_slices=self.expected, bytes_received=self.bytes)

    def emit_progress(self) -> None:
        self.emit(("progress", self.progress()))


@dataclass(frozen=True)
class ServerDescription:
    """What this server runs (GetModelInfo)."""

    engine: str
    model: str
    weights_sha256: str
    device: str
    default_lungs: str
    lung_methods: tuple[str, ...]
    model_card: str
    software_version: str
    max_concurrent_scans: int
    max_queued_slices: int
    max_scan_bytes: int
    max_slices: int
    max_chunk_bytes: int
    notice: str
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class JobRecord:
    """A job as the queries see it: its row, its live state if this process works on it, its artifact rows."""

    row: dict
    live: LiveJob | None = None
    artifacts: list[dict] | None = None


@dataclass
class Lifecycle:
    """The server's phase, shared by the parts of the job manager."""

    ready: bool = False
    draining: bool = False
    closing: bool = False


class JobPart:
    """What the parts of the job service share (admission, uploads, runner): the config, the store, the
    metrics and the scheduler, and for the parts that follow live jobs the lifecycle and the live jobs."""

    def __init__(self, config, store, metrics, scheduler, lifecycle: Lifecycle | None = None,
                 live: dict[str, LiveJob] | None = None):
        self.config = config
        self.store = store
        self.metrics = metrics
        self.scheduler = scheduler
        self.lifecycle = lifecycle
        self.live = live
