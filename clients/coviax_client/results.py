"""What the SDK returns: :class:`Result` (a finished analysis and its artifacts), and the error every
failed call raises (:class:`CoviaxClientError`, with the gRPC status code's name)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable

from coviax_api.coviax.v1 import coviax_pb2 as pb


class CoviaxClientError(Exception):
    """A call failed; ``code`` is the gRPC status code name (e.g. "INVALID_ARGUMENT")."""

    def __init__(self, code: str, message: str, job_id: str = ""):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.job_id = job_id


@dataclass
class ArtifactInfo:
    name: str
    kind: str
    file_name: str
    size: int
    sha256: str


@dataclass
class Result:
    """A finished analysis: the report's main numbers, the full report.json, the artifacts to download."""

    job_id: str
    report: dict
    ratios_pct: dict
    lung_volume_ml: dict
    lesion_volume_ml: dict
    blob_count: int
    blobs: list
    lung_method: str
    engine: str
    model: str
    timings_s: dict
    artifacts: list[ArtifactInfo] = field(default_factory=list)
    existing: bool = False

    @classmethod
    def from_messages(cls, result: pb.Result, artifacts: Iterable[pb.ArtifactRef] = (), existing: bool = False) -> "Result":
        report = json.loads(result.report_json) if result.report_json else {}
        return cls(
            job_id=result.job_id,
            report=report,
            ratios_pct={"all": result.ratios_pct.all, "ggo": result.ratios_pct.ggo,
                        "consolidation": result.ratios_pct.consolidation},
            lung_volume_ml={"left": result.lung_volume_ml.left, "right": result.lung_volume_ml.right,
                            "total": result.lung_volume_ml.total},
            lesion_volume_ml={"ggo": result.lesion_volume_ml.ggo, "consolidation": result.lesion_volume_ml.consolidation,
                              "vessels": result.lesion_volume_ml.vessels},
            blob_count=result.blob_count,
            blobs=list(report.get("blobs", [])),
            lung_method=result.lung_method,
            engine=result.engine,
            model=result.model,
            timings_s=dict(result.timings_s),
            artifacts=[ArtifactInfo(a.name, a.kind, a.file_name, a.size, a.sha256) for a in artifacts],
            existing=existing,
        )

    def summary_rows(self) -> list[tuple[str, str]]:
        lung, les, r = self.lung_volume_ml, self.lesion_volume_ml, self.ratios_pct
        rows = [
            ("Lung volume (L)", f"{lung['total'] / 1000:.2f}  (right {lung['right'] / 1000:.2f}, left {lung['left'] / 1000:.2f})"),
            ("GGO volume (L)", f"{les['ggo'] / 1000:.3f}"),
            ("Consolidation volume (L)", f"{les['consolidation'] / 1000:.3f}"),
            ("VRall (%)", f"{r['all']:.2f}"),
            ("VRggo (%)", f"{r['ggo']:.2f}"),
            ("VRcs (%)", f"{r['consolidation']:.2f}"),
            ("Lesion blobs", str(self.blob_count)),
        ]
        for blob in self.blobs[:3]:
            c = blob["centroid_patient_mm"]
            rows.append((f"Blob {blob['rank']} ({blob['class']})",
                         f"{blob['volume_ml']:.1f} mL at LPS ({c[0]:.0f}, {c[1]:.0f}, {c[2]:.0f}) mm"))
        rows += [
            ("Lung method", self.lung_method),
            ("Lesion engine", f"{self.engine} ({self.model})"),
            ("Time (s)", f"{self.timings_s.get('total', 0.0):.1f}"),
            ("Job", self.job_id),
        ]
        return rows

    def format_table(self) -> str:
        rows = self.summary_rows()
        width = max(len(k) for k, _ in rows)
        lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
        lines.append(self.report.get("notice", "Research use only. Not a medical device."))
        return "\n".join(lines)
