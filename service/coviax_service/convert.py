"""Between protobuf messages of coviax.v1 and the job service's plain data (the servicer's side).

Requests: :func:`request_from_header`. Answers: results (report.json), artifact refs,
jobs (:class:`~coviax_service.jobs.model.JobRecord`), progress, the server description.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from coviax_api.coviax.v1 import coviax_pb2 as pb
from coviax_service.errors import InvalidRequest
from coviax_service.jobs.model import JobRecord, JobRequest, JobState, Progress, ServerDescription


class Malformed:
    """Bytes that are not a valid message of an RPC's request type (truncated, bad UTF-8 in a string, ...).

    The servicer's deserializers give this instead of raising, so that the handler answers
    INVALID_ARGUMENT (gRPC itself would answer UNKNOWN and name the Python exception).
    """

    def __init__(self, type_name: str):
        self.type_name = type_name

    def error(self) -> InvalidRequest:
        return InvalidRequest(f"the request is not a valid coviax.v1.{self.type_name} message "
                              "(malformed protobuf, or a string that is not UTF-8)")


def request_from_header(header: pb.Header, tenant: str = "") -> JobRequest:
    o = header.options
    return JobRequest(
        lungs=o.lungs, engine=o.engine, outputs=tuple(o.outputs),
        max_blobs=int(o.max_blobs) if o.HasField("max_blobs") else None, series_uid=o.series_uid, device=o.device,
        idempotency_key=header.idempotency_key, study_label=header.study_label, client_ref=header.client_ref,
        batch_id=header.batch_id,
        expected_instances=int(header.expected_instances) if header.HasField("expected_instances") else None,
        tenant=tenant,
    )


def progress_message(p: Progress) -> pb.Progress:
    return pb.Progress(**asdict(p))


def model_info_message(d: ServerDescription) -> pb.ModelInfo:
    fields = asdict(d)
    fields["lung_methods"], fields["outputs"] = list(d.lung_methods), list(d.outputs)
    return pb.ModelInfo(**fields)


def state_name(value: int) -> str:
    """The JobState name of a ListJobs filter ("" = all); ValueError for a number that is not a state."""
    if not value:
        return ""
    name = pb.JobState.Name(value)  # ValueError if unknown
    return JobState(name).value


def result_from_report(job_id: str, report: dict) -> pb.Result:
    lungs, lesions, inp = report.get("lungs", {}), report.get("lesions", {}), report.get("input", {})
    lung_ml, lesion_ml, ratios = lungs.get("volume_ml", {}), lesions.get("volume_ml", {}), report.get("ratios_pct", {})
    blobs = []
    for b in report.get("blobs", []):
        cz, cy, cx = b["centroid_voxel_zyx"]
        px, py, pz = b["centroid_patient_mm"]
        z0, y0, x0, z1, y1, x1 = b["bbox_voxel_zyx"]
        blobs.append(pb.Blob(
            rank=int(b["rank"]), dominant_class=str(b["class"]), volume_ml=float(b["volume_ml"]),
            ggo_ml=float(b["ggo_ml"]), consolidation_ml=float(b["consolidation_ml"]),
            centroid_voxel_zyx=pb.VoxelZYX(z=cz, y=cy, x=cx), centroid_patient_mm=pb.PointLPS(x=px, y=py, z=pz),
            bbox_voxel_zyx=pb.BoxZYX(z0=z0, y0=y0, x0=x0, z1=z1, y1=y1, x1=x1),
        ))
    return pb.Result(
        job_id=job_id,
        schema=report.get("schema", ""),
        software_version=report.get("software", {}).get("version", ""),
        created_utc=report.get("created_utc", ""),
        study_label=report.get("study_label") or "",
        input=pb.InputInfo(
            format=inp.get("format", ""), slices=int(inp.get("slices", 0)),
            shape_zyx=[int(s) for s in inp.get("shape_zyx", [])],
            spacing_mm=[float(s) for s in inp.get("spacing_mm", [])],
            series_uid=inp.get("series_uid") or "", warnings=list(inp.get("warnings", [])),
        ),
        lung_method=lungs.get("method", ""),
        lung_notes=list(lungs.get("notes", [])),
        lung_volume_ml=pb.LungVolumes(**{k: float(lung_ml.get(k, 0.0)) for k in ("left", "right", "total")}),
        engine=lesions.get("engine", ""),
        model=lesions.get("model", ""),
        lesion_notes=list(lesions.get("notes", [])),
        lesion_volume_ml=pb.LesionVolumes(**{k: float(lesion_ml.get(k, 0.0)) for k in ("ggo", "consolidation", "vessels")}),
        ratios_pct=pb.Ratios(**{k: float(ratios.get(k, 0.0)) for k in ("all", "ggo", "consolidation")}),
        blob_count=int(report.get("blob_count", 0)),
        blobs=blobs,
        timings_s={k: float(v) for k, v in report.get("timings_s", {}).items()},
        notice=report.get("notice", ""),
        report_json=json.dumps(report),
    )


def artifact_refs(rows: list[dict]) -> list[pb.ArtifactRef]:
    return [
        pb.ArtifactRef(name=a["name"], kind=a["kind"], file_name=a["file_name"], size=int(a["size"]), sha256=a["sha256"])
        for a in rows
    ]


def job_message(record: JobRecord, with_result: bool = True) -> pb.Job:
    """A Job from its database row, with the live counters of a job in progress."""
    row, live, artifacts = record.row, record.live, record.artifacts
    state = live.state if live is not None else row["state"]
    progress = pb.Progress(
        slices_received=live.received if live is not None else int(row["instances"]),
        slices_segmented=live.segmented if live is not None else (int(row["instances"]) if state == "DONE" else 0),
        stage=live.stage if live is not None else state.lower(),
        expected_slices=int(row.get("expected") or 0),
        bytes_received=live.bytes if live is not None else int(row["bytes"]),
    )
    job = pb.Job(
        job_id=row["job_id"], state=pb.JobState.Value(str(state)), batch_id=row.get("batch_id") or "",
        client_ref=row.get("client_ref") or "", created_unix=float(row["created"]), updated_unix=float(row["updated"]),
        progress=progress, artifacts_expired=bool(row.get("artifacts_expired")),
    )
    code = live.error_code if live is not None and live.error_code else row.get("error_code")
    message = live.error_message if live is not None and live.error_message else row.get("error_message")
    if code:
        job.error.CopyFrom(pb.JobError(code=code, message=message or ""))
    if with_result and state == "DONE" and row.get("report"):
        job.result.CopyFrom(result_from_report(row["job_id"], json.loads(row["report"])))
    if with_result and artifacts:
        job.artifacts.extend(artifact_refs(artifacts))
    return job
