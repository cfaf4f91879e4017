"""``coviax compare BASELINE FOLLOWUP --out DIR``: new, resolved and persistent lesions between two scans.

Both scans go through ``pipeline.run`` (their own outputs in ``DIR/baseline`` and ``DIR/followup``);
the baseline is registered onto the follow-up (``coviax.change``) and the change is written as

- ``change.json``: volumes (mL) of new, resolved and persistent lesion, ΔVRall (pp), ΔGGO and
  Δconsolidation (mL), the registration's transform and metric;
- ``change_montage.png``: the follow-up's most changed slices, new red, resolved green, persistent
  yellow;
- ``change_labels.nii.gz``: the change map on the follow-up grid (1 new, 2 resolved, 3 persistent);
- ``change_seg.dcm``: the same as a DICOM SEG on the follow-up series (DICOM follow-ups only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from coviax.change import TRANSFORMS
from coviax.lesions import ENGINES
from coviax.lungs import LUNG_METHODS


def add_compare_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("compare", help="follow-up change between two scans of one patient",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("baseline", help="the earlier scan (DICOM folder, zip, NIfTI/MHA/NRRD)")
    p.add_argument("followup", help="the later scan")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--transform", default=TRANSFORMS[0], choices=list(TRANSFORMS))
    p.add_argument("--lungs", default=LUNG_METHODS[0], choices=list(LUNG_METHODS))
    p.add_argument("--engine", default=ENGINES[0], choices=list(ENGINES))
    p.set_defaults(func=_cmd_compare)


def compare_scans(baseline, followup, out_dir, transform: str = "rigid", options=None) -> dict:
    """Run both scans, the change between them and its files; returns change.json's content."""
    from coviax.change import compare_results, write_change_montage
    from coviax.pipeline import SegmentOptions, run

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    options = options or SegmentOptions(outputs=("report", "png"))
    base = run(baseline, out / "baseline", options)
    follow = run(followup, out / "followup", options)
    change = compare_results(base, follow, transform)
    files = {"montage": write_change_montage(follow.volume.hu, change.change_map, out / "change_montage.png",
                                             title="Follow-up change (baseline registered onto the follow-up)")}
    import SimpleITK as sitk

    files["labels"] = out / "change_labels.nii.gz"
    sitk.WriteImage(follow.volume.to_sitk(change.change_map), str(files["labels"]), useCompression=True)
    if follow.volume.source_headers:
        from coviax.export.dicom.seg import CHANGE_SEGMENTS, write_dicom_seg

        files["seg"] = write_dicom_seg(change.change_map, follow.volume, out / "change_seg.dcm",
                                       f"{follow.lesions.engine} change", segments=CHANGE_SEGMENTS,
                                       description="COViaX follow-up change (research use only)")
    payload = change.to_dict()
    payload["files"] = {k: p.name for k, p in files.items()}
    payload["baseline"] = {"ratios_pct": base.report["ratios_pct"], "lesion_ml": base.report["lesions"]["volume_ml"]}
    payload["followup"] = {"ratios_pct": follow.report["ratios_pct"],
                           "lesion_ml": follow.report["lesions"]["volume_ml"]}
    (out / "change.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return payload


def _cmd_compare(args: argparse.Namespace) -> int:
    from coviax.pipeline import SegmentOptions

    options = SegmentOptions(lungs=args.lungs, engine=args.engine, outputs=("report", "png"))
    payload = compare_scans(args.baseline, args.followup, args.out, args.transform, options)
    v, d = payload["volumes_ml"], payload["deltas"]
    print(f"new {v['new']:.1f} mL, resolved {v['resolved']:.1f} mL, persistent {v['persistent']:.1f} mL; "
          f"ΔVRall {d['d_vr_all_pp']:+.2f} pp, ΔGGO {d['d_ggo_ml']:+.1f} mL, "
          f"Δconsolidation {d['d_consolidation_ml']:+.1f} mL")
    print(f"outputs in {Path(args.out).resolve()}: " + ", ".join(payload["files"].values()) + ", change.json")
    return 0
