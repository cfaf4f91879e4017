"""``coviax train STAGE --config FILE [--address RAY] [--run-dir DIR]`` (registered by coviax.cli).

Ray and torch are imported only when a stage runs, so ``coviax --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from coviax.errors import CoviaxError
from coviax_trainer import STAGES

CHOICES = list(STAGES) + ["all"]


def add_train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="the weakly supervised training pipeline on Ray (pseudo-labels -> U-Net A -> relabel -> U-Net B -> export)",
        description="Run one stage of the training pipeline, or all of them. Finished stages are skipped and an "
        "interrupted stage resumes; state lives in the run folder. Research use only, not a medical device.",
    )
    p.add_argument("stage", choices=CHOICES, help="stage to run; `all` runs every stage in order")
    p.add_argument("--config", required=True, help="training config (YAML), e.g. trainer/configs/default.yaml")
    p.add_argument("--address", help="join this Ray cluster (e.g. auto, ray://head:10001); default: start Ray locally")
    p.add_argument("--run-dir", help="run folder (default: $COVIAX_RUN_DIR, config run_dir, "
                   "/mnt/coviax/runs/NAME when mounted, else runs/NAME)")
    p.add_argument("--export", dest="export_n", type=int, metavar="N",
                   help="(correct) write N pseudo-labelled slices for review")
    p.add_argument("--import", dest="import_dir", metavar="DIR",
                   help="(correct) import corrected label maps <scan>__z<slice>.label.png from DIR")
    p.add_argument("--out", help="(correct --export) folder for the review files (default RUN/review)")
    p.add_argument("--redo", action="store_true", help="redo the named stage(s) and everything after, even if done")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from coviax_trainer.config import load_config
    from coviax_trainer.rundir import RunDir, default_run_dir
    from coviax_trainer.runner import run_stages

    if (args.export_n is not None or args.import_dir or args.out) and args.stage != "correct":
        raise CoviaxError("--export, --import and --out belong to `coviax train correct`")
    if args.stage == "correct" and args.export_n is None and not args.import_dir:
        raise CoviaxError("coviax train correct: give --export N (write slices for review) or --import DIR (read corrections)")
    if args.import_dir and not Path(args.import_dir).is_dir():
        raise CoviaxError(f"--import {args.import_dir}: no such folder")
    config = load_config(args.config)
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(config)
    stages = list(STAGES) if args.stage == "all" else [args.stage]
    if args.redo:
        first = STAGES.index(stages[0])
        RunDir(run_dir, config).mark_stale(list(STAGES[first:]), "--redo")
    options = {"export_n": args.export_n, "import_dir": args.import_dir, "out": args.out, "explicit": args.stage == "correct"}
    try:
        return run_stages(stages, config, run_dir, address=args.address, options=options)
    except (KeyboardInterrupt, SystemExit):  # Ray Train's own Ctrl-C handler ends with sys.exit
        print(f"coviax train: interrupted; run the same command again to resume (run folder {run_dir})", file=sys.stderr)
        return 130
