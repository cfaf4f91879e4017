from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    RECEIVING: _ClassVar[JobState]
    QUEUED: _ClassVar[JobState]
    RUNNING: _ClassVar[JobState]
    DONE: _ClassVar[JobState]
    FAILED: _ClassVar[JobState]
    CANCELLED: _ClassVar[JobState]
JOB_STATE_UNSPECIFIED: JobState
RECEIVING: JobState
QUEUED: JobState
RUNNING: JobState
DONE: JobState
FAILED: JobState
CANCELLED: JobState

class SegmentOptions(_message.Message):
    __slots__ = ("lungs", "engine", "outputs", "max_blobs", "series_uid", "device")
    LUNGS_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    MAX_BLOBS_FIELD_NUMBER: _ClassVar[int]
    SERIES_UID_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    lungs: str
    engine: str
    outputs: _containers.RepeatedScalarFieldContainer[str]
    max_blobs: int
    series_uid: str
    device: str
    def __init__(self, lungs: _Optional[str] = ..., engine: _Optional[str] = ..., outputs: _Optional[_Iterable[str]] = ..., max_blobs: _Optional[int] = ..., series_uid: _Optional[str] = ..., device: _Optional[str] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = ("options", "idempotency_key", "study_label", "expected_instances", "batch_id", "client_ref")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    STUDY_LABEL_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_REF_FIELD_NUMBER: _ClassVar[int]
    options: SegmentOptions
    idempotency_key: str
    study_label: str
    expected_instances: int
    batch_id: str
    client_ref: str
    def __init__(self, options: _Optional[_Union[SegmentOptions, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., study_label: _Optional[str] = ..., expected_instances: _Optional[int] = ..., batch_id: _Optional[str] = ..., client_ref: _Optional[str] = ...) -> None: ...

class DicomChunk(_message.Message):
    __slots__ = ("instance_index", "data", "last")
    INSTANCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    instance_index: int
    data: bytes
    last: bool
    def __init__(self, instance_index: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ...) -> None: ...

class RawSlices(_message.Message):
    __slots__ = ("first_index", "count", "rows", "columns", "hu", "spacing_zyx", "origin_xyz", "direction", "total_slices")
    FIRST_INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    HU_FIELD_NUMBER: _ClassVar[int]
    SPACING_ZYX_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_XYZ_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SLICES_FIELD_NUMBER: _ClassVar[int]
    first_index: int
    count: int
    rows: int
    columns: int
    hu: bytes
    spacing_zyx: _containers.RepeatedScalarFieldContainer[float]
    origin_xyz: _containers.RepeatedScalarFieldContainer[float]
    direction: _containers.RepeatedScalarFieldContainer[float]
    total_slices: int
    def __init__(self, first_index: _Optional[int] = ..., count: _Optional[int] = ..., rows: _Optional[int] = ..., columns: _Optional[int] = ..., hu: _Optional[bytes] = ..., spacing_zyx: _Optional[_Iterable[float]] = ..., origin_xyz: _Optional[_Iterable[float]] = ..., direction: _Optional[_Iterable[float]] = ..., total_slices: _Optional[int] = ...) -> None: ...

class EndOfScan(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SegmentRequest(_message.Message):
    __slots__ = ("header", "chunk", "raw", "end")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    header: Header
    chunk: DicomChunk
    raw: RawSlices
    end: EndOfScan
    def __init__(self, header: _Optional[_Union[Header, _Mapping]] = ..., chunk: _Optional[_Union[DicomChunk, _Mapping]] = ..., raw: _Optional[_Union[RawSlices, _Mapping]] = ..., end: _Optional[_Union[EndOfScan, _Mapping]] = ...) -> None: ...

class Accepted(_message.Message):
    __slots__ = ("job_id", "existing", "batch_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    EXISTING_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    existing: bool
    batch_id: str
    def __init__(self, job_id: _Optional[str] = ..., existing: _Optional[bool] = ..., batch_id: _Optional[str] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("slices_received", "slices_segmented", "stage", "expected_slices", "bytes_received")
    SLICES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    SLICES_SEGMENTED_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_SLICES_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    slices_received: int
    slices_segmented: int
    stage: str
    expected_slices: int
    bytes_received: int
    def __init__(self, slices_received: _Optional[int] = ..., slices_segmented: _Optional[int] = ..., stage: _Optional[str] = ..., expected_slices: _Optional[int] = ..., bytes_received: _Optional[int] = ...) -> None: ...

class LungVolumes(_message.Message):
    __slots__ = ("left", "right", "total")
    LEFT_FIELD_NUMBER: _ClassVar[int]
    RIGHT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    left: float
    right: float
    total: float
    def __init__(self, left: _Optional[float] = ..., right: _Optional[float] = ..., total: _Optional[float] = ...) -> None: ...

class LesionVolumes(_message.Message):
    __slots__ = ("ggo", "consolidation", "vessels")
    GGO_FIELD_NUMBER: _ClassVar[int]
    CONSOLIDATION_FIELD_NUMBER: _ClassVar[int]
    VESSELS_FIELD_NUMBER: _ClassVar[int]
    ggo: float
    consolidation: float
    vessels: float
    def __init__(self, ggo: _Optional[float] = ..., consolidation: _Optional[float] = ..., vessels: _Optional[float] = ...) -> None: ...

class Ratios(_message.Message):
    __slots__ = ("all", "ggo", "consolidation")
    ALL_FIELD_NUMBER: _ClassVar[int]
    GGO_FIELD_NUMBER: _ClassVar[int]
    CONSOLIDATION_FIELD_NUMBER: _ClassVar[int]
    all: float
    ggo: float
    consolidation: float
    def __init__(self, all: _Optional[float] = ..., ggo: _Optional[float] = ..., consolidation: _Optional[float] = ...) -> None: ...

class VoxelZYX(_message.Message):
    __slots__ = ("z", "y", "x")
    Z_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    z: float
    y: float
    x: float
    def __init__(self, z: _Optional[float] = ..., y: _Optional[float] = ..., x: _Optional[float] = ...) -> None: ...

class PointLPS(_message.Message):
    __slots__ = ("x", "y", "z")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    Z_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    z: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ..., z: _Optional[float] = ...) -> None: ...

class BoxZYX(_message.Message):
    __slots__ = ("z0", "y0", "x0", "z1", "y1", "x1")
    Z0_FIELD_NUMBER: _ClassVar[int]
    Y0_FIELD_NUMBER: _ClassVar[int]
    X0_FIELD_NUMBER: _ClassVar[int]
    Z1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X1_FIELD_NUMBER: _ClassVar[int]
    z0: int
    y0: int
    x0: int
    z1: int
    y1: int
    x1: int
    def __init__(self, z0: _Optional[int] = ..., y0: _Optional[int] = ..., x0: _Optional[int] = ..., z1: _Optional[int] = ..., y1: _Optional[int] = ..., x1: _Optional[int] = ...) -> None: ...

class Blob(_message.Message):
    __slots__ = ("rank", "dominant_class", "volume_ml", "ggo_ml", "consolidation_ml", "centroid_voxel_zyx", "centroid_patient_mm", "bbox_voxel_zyx")
    RANK_FIELD_NUMBER: _ClassVar[int]
    DOMINANT_CLASS_FIELD_NUMBER: _ClassVar[int]
    VOLUME_ML_FIELD_NUMBER: _ClassVar[int]
    GGO_ML_FIELD_NUMBER: _ClassVar[int]
    CONSOLIDATION_ML_FIELD_NUMBER: _ClassVar[int]
    CENTROID_VOXEL_ZYX_FIELD_NUMBER: _ClassVar[int]
    CENTROID_PATIENT_MM_FIELD_NUMBER: _ClassVar[int]
    BBOX_VOXEL_ZYX_FIELD_NUMBER: _ClassVar[int]
    rank: int
    dominant_class: str
    volume_ml: float
    ggo_ml: float
    consolidation_ml: float
    centroid_voxel_zyx: VoxelZYX
    centroid_patient_mm: PointLPS
    bbox_voxel_zyx: BoxZYX
    def __init__(self, rank: _Optional[int] = ..., dominant_class: _Optional[str] = ..., volume_ml: _Optional[float] = ..., ggo_ml: _Optional[float] = ..., consolidation_ml: _Optional[float] = ..., centroid_voxel_zyx: _Optional[_Union[VoxelZYX, _Mapping]] = ..., centroid_patient_mm: _Optional[_Union[PointLPS, _Mapping]] = ..., bbox_voxel_zyx: _Optional[_Union[BoxZYX, _Mapping]] = ...) -> None: ...

class InputInfo(_message.Message):
    __slots__ = ("format", "slices", "shape_zyx", "spacing_mm", "series_uid", "warnings")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SLICES_FIELD_NUMBER: _ClassVar[int]
    SHAPE_ZYX_FIELD_NUMBER: _ClassVar[int]
    SPACING_MM_FIELD_NUMBER: _ClassVar[int]
    SERIES_UID_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    format: str
    slices: int
    shape_zyx: _containers.RepeatedScalarFieldContainer[int]
    spacing_mm: _containers.RepeatedScalarFieldContainer[float]
    series_uid: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, format: _Optional[str] = ..., slices: _Optional[int] = ..., shape_zyx: _Optional[_Iterable[int]] = ..., spacing_mm: _Optional[_Iterable[float]] = ..., series_uid: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class Result(_message.Message):
    __slots__ = ("job_id", "schema", "software_version", "created_utc", "study_label", "input", "lung_method", "lung_notes", "lung_volume_ml", "engine", "model", "lesion_notes", "lesion_volume_ml", "ratios_pct", "blob_count", "blobs", "timings_s", "notice", "report_json")
    class TimingsSEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATED_UTC_FIELD_NUMBER: _ClassVar[int]
    STUDY_LABEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    LUNG_METHOD_FIELD_NUMBER: _ClassVar[int]
    LUNG_NOTES_FIELD_NUMBER: _ClassVar[int]
    LUNG_VOLUME_ML_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LESION_NOTES_FIELD_NUMBER: _ClassVar[int]
    LESION_VOLUME_ML_FIELD_NUMBER: _ClassVar[int]
    RATIOS_PCT_FIELD_NUMBER: _ClassVar[int]
    BLOB_COUNT_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_S_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    schema: str
    software_version: str
    created_utc: str
    study_label: str
    input: InputInfo
    lung_method: str
    lung_notes: _containers.RepeatedScalarFieldContainer[str]
    lung_volume_ml: LungVolumes
    engine: str
    model: str
    lesion_notes: _containers.RepeatedScalarFieldContainer[str]
    lesion_volume_ml: LesionVolumes
    ratios_pct: Ratios
    blob_count: int
    blobs: _containers.RepeatedCompositeFieldContainer[Blob]
    timings_s: _containers.ScalarMap[str, float]
    notice: str
    report_json: str
    def __init__(self, job_id: _Optional[str] = ..., schema: _Optional[str] = ..., software_version: _Optional[str] = ..., created_utc: _Optional[str] = ..., study_label: _Optional[str] = ..., input: _Optional[_Union[InputInfo, _Mapping]] = ..., lung_method: _Optional[str] = ..., lung_notes: _Optional[_Iterable[str]] = ..., lung_volume_ml: _Optional[_Union[LungVolumes, _Mapping]] = ..., engine: _Optional[str] = ..., model: _Optional[str] = ..., lesion_notes: _Optional[_Iterable[str]] = ..., lesion_volume_ml: _Optional[_Union[LesionVolumes, _Mapping]] = ..., ratios_pct: _Optional[_Union[Ratios, _Mapping]] = ..., blob_count: _Optional[int] = ..., blobs: _Optional[_Iterable[_Union[Blob, _Mapping]]] = ..., timings_s: _Optional[_Mapping[str, float]] = ..., notice: _Optional[str] = ..., report_json: _Optional[str] = ...) -> None: ...

class ArtifactRef(_message.Message):
    __slots__ = ("name", "kind", "file_name", "size", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    file_name: str
    size: int
    sha256: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., file_name: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class Artifacts(_message.Message):
    __slots__ = ("job_id", "artifacts")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    artifacts: _containers.RepeatedCompositeFieldContainer[ArtifactRef]
    def __init__(self, job_id: _Optional[str] = ..., artifacts: _Optional[_Iterable[_Union[ArtifactRef, _Mapping]]] = ...) -> None: ...

class SegmentEvent(_message.Message):
    __slots__ = ("accepted", "progress", "result", "artifacts")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    accepted: Accepted
    progress: Progress
    result: Result
    artifacts: Artifacts
    def __init__(self, accepted: _Optional[_Union[Accepted, _Mapping]] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., result: _Optional[_Union[Result, _Mapping]] = ..., artifacts: _Optional[_Union[Artifacts, _Mapping]] = ...) -> None: ...

class Rejected(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class BatchDone(_message.Message):
    __slots__ = ("batch_id", "accepted", "rejected")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    accepted: int
    rejected: int
    def __init__(self, batch_id: _Optional[str] = ..., accepted: _Optional[int] = ..., rejected: _Optional[int] = ...) -> None: ...

class BatchEvent(_message.Message):
    __slots__ = ("scan_index", "client_ref", "accepted", "rejected", "done")
    SCAN_INDEX_FIELD_NUMBER: _ClassVar[int]
    CLIENT_REF_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    scan_index: int
    client_ref: str
    accepted: Accepted
    rejected: Rejected
    done: BatchDone
    def __init__(self, scan_index: _Optional[int] = ..., client_ref: _Optional[str] = ..., accepted: _Optional[_Union[Accepted, _Mapping]] = ..., rejected: _Optional[_Union[Rejected, _Mapping]] = ..., done: _Optional[_Union[BatchDone, _Mapping]] = ...) -> None: ...

class JobError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "state", "batch_id", "client_ref", "created_unix", "updated_unix", "progress", "error", "result", "artifacts", "artifacts_expired")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_REF_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    UPDATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    batch_id: str
    client_ref: str
    created_unix: float
    updated_unix: float
    progress: Progress
    error: JobError
    result: Result
    artifacts: _containers.RepeatedCompositeFieldContainer[ArtifactRef]
    artifacts_expired: bool
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., batch_id: _Optional[str] = ..., client_ref: _Optional[str] = ..., created_unix: _Optional[float] = ..., updated_unix: _Optional[float] = ..., progress: _Optional[_Union[Progress, _Mapping]] = ..., error: _Optional[_Union[JobError, _Mapping]] = ..., result: _Optional[_Union[Result, _Mapping]] = ..., artifacts: _Optional[_Iterable[_Union[ArtifactRef, _Mapping]]] = ..., artifacts_expired: _Optional[bool] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("batch_id", "state", "page_size", "page_token")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    batch_id: str
    state: JobState
    page_size: int
    page_token: str
    def __init__(self, batch_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DownloadArtifactRequest(_message.Message):
    __slots__ = ("job_id", "name", "offset")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    offset: int
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ArtifactChunk(_message.Message):
    __slots__ = ("offset", "data", "total_size", "sha256", "file_name")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    total_size: int
    sha256: str
    file_name: str
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., total_size: _Optional[int] = ..., sha256: _Optional[str] = ..., file_name: _Optional[str] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("engine", "model", "weights_sha256", "device", "default_lungs", "lung_methods", "model_card", "software_version", "max_concurrent_scans", "max_queued_slices", "max_scan_bytes", "max_slices", "max_chunk_bytes", "notice", "outputs")
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_LUNGS_FIELD_NUMBER: _ClassVar[int]
    LUNG_METHODS_FIELD_NUMBER: _ClassVar[int]
    MODEL_CARD_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_SCANS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUED_SLICES_FIELD_NUMBER: _ClassVar[int]
    MAX_SCAN_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_SLICES_FIELD_NUMBER: _ClassVar[int]
    MAX_CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    engine: str
    model: str
    weights_sha256: str
    device: str
    default_lungs: str
    lung_methods: _containers.RepeatedScalarFieldContainer[str]
    model_card: str
    software_version: str
    max_concurrent_scans: int
    max_queued_slices: int
    max_scan_bytes: int
    max_slices: int
    max_chunk_bytes: int
    notice: str
    outputs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, engine: _Optional[str] = ..., model: _Optional[str] = ..., weights_sha256: _Optional[str] = ..., device: _Optional[str] = ..., default_lungs: _Optional[str] = ..., lung_methods: _Optional[_Iterable[str]] = ..., model_card: _Optional[str] = ..., software_version: _Optional[str] = ..., max_concurrent_scans: _Optional[int] = ..., max_queued_slices: _Optional[int] = ..., max_scan_bytes: _Optional[int] = ..., max_slices: _Optional[int] = ..., max_chunk_bytes: _Optional[int] = ..., notice: _Optional[str] = ..., outputs: _Optional[_Iterable[str]] = ...) -> None: ...
