"""report.json (dict) and job rows -> protobuf messages of coviax.v1."""

from __future__ import annotations

import json

from coviax_api.coviax.v1 import coviax_pb2 as pb

STATE_NAMES = ("RECEIVING", "QUEUED", "RUNNING", "DONE", "FAILED", "CANCELLED")


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


def job_message(row: dict, live=None, artifacts: list[dict] | None = None, with_result: bool = True) -> pb.Job:
    """A Job from its database row, with the live counters of a job in progress."""
    state = live.state if live is not None else row["state"]
    progress = pb.Progress(
        slices_received=live.received if live is not None else int(row["instances"]),
        slices_segmented=live.segmented if live is not None else (int(row["instances"]) if state == "DONE" else 0),
        stage=live.stage if live is not None else state.lower(),
        expected_slices=int(row.get("expected") or 0),
        bytes_received=live.bytes if live is not None else int(row["bytes"]),
    )
    job = pb.Job(
        job_id=row["job_id"], state=pb.JobState.Value(state), batch_id=row.get("batch_id") or "",
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
