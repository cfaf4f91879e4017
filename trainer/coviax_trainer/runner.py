"""Running stages in order, skipping finished ones, against a local Ray or a cluster."""

from __future__ import annotations

import time
from pathlib import Path

from coviax.errors import CoviaxError
from coviax_trainer.config import Config, resolve_import_dir
from coviax_trainer.progress import Reporter, fmt_seconds
from coviax_trainer.rundir import RunDir

NEEDS_RAY = {"pseudo-labels", "unet-a", "relabel", "unet-b"}
REQUIRES = {
    "correct": ["pseudo-labels"],
    "unet-a": ["pseudo-labels"],
    "relabel": ["unet-a"],
    "unet-b": ["relabel"],
    "export": ["unet-b"],
}
STAGE_DIR = {"pseudo-labels": "pseudo", "unet-a": "unet_a", "relabel": "relabel", "unet-b": "unet_b"}
ALWAYS_RUN = {"export"}  # cheap; refreshes the card (held-out numbers) without touching unchanged weights


def _run_stage(stage: str, run: RunDir, config: Config, reporter: Reporter, options: dict) -> dict:
    if stage == "pseudo-labels":
        from coviax_trainer import pseudo

        return pseudo.run(run, config, reporter)
    if stage == "correct":
        return _correct(run, config, reporter, options)
    if stage in ("unet-a", "unet-b"):
        from coviax_trainer import train

        return train.run(run, config, reporter, stage)
    if stage == "relabel":
        from coviax_trainer import relabel

        return relabel.run(run, config, reporter)
    if stage == "export":
        from coviax_trainer import export

        return export.run(run, config, reporter)
    raise CoviaxError(f"unknown stage {stage!r}")


def _correct(run: RunDir, config: Config, reporter: Reporter, options: dict) -> dict:
    from coviax_trainer.correct import export_for_review, import_corrections

    summary: dict = {}
    if options.get("export_n"):
        out = export_for_review(run, int(options["export_n"]), options.get("out"))
        reporter.line(f"correct: {options['export_n']} slices for review in {out} (see README.md there)")
        summary["exported_to"] = str(out)
    directory = options.get("import_dir") or (None if options.get("explicit") else resolve_import_dir(config))
    if directory:
        result = import_corrections(run, Path(directory))
        reporter.line(
            f"correct: {result['imported']} correction(s) imported from {directory} ({result['unchanged']} unchanged); "
            "they replace the generated labels in every later stage"
        )
        summary["import"] = result
    if not summary:
        reporter.line("correct: nothing to import (no --import DIR and no corrections.import_dir in the config)")
    return summary


def run_stages(stages: list[str], config: Config, run_dir: Path, address: str | None = None,
               options: dict | None = None, reporter: Reporter | None = None) -> int:
    """Run ``stages`` in order; finished ones are skipped (stage ``correct`` and ``export`` always act)."""
    from coviax_trainer.raytools import ensure_ray, shutdown_ray

    options = options or {}
    reporter = reporter or Reporter()
    run = RunDir(run_dir, config)
    run.lock()
    t_all = time.perf_counter()
    reporter.line(f"coviax train: run folder {run.root}")
    try:
        for stage in stages:
            info = run.stage_info(stage)
            explicit_correct = stage == "correct" and options.get("explicit")
            if info.get("status") == "done" and stage not in ALWAYS_RUN and not explicit_correct:
                reporter.line(f"{stage}: already done ({info.get('finished')}), skipped")
                if info.get("config_digest") and info["config_digest"] != config.stage_digest(stage):
                    reporter.line(f"  warning: the config of {stage} changed since it was done; add --redo to redo it")
                run.log(stage, "skip", "already done")
                continue
            for need in REQUIRES.get(stage, []):
                if not run.is_done(need):
                    raise CoviaxError(
                        f"stage {stage} needs stage {need} first: run `coviax train {need} --config {config.path} "
                        f"--run-dir {run.root}` (or `coviax train all ...`)"
                    )
            if info.get("status") == "stale" and stage in STAGE_DIR:
                reporter.line(f"{stage}: stale ({info.get('stale_reason')}); redoing it from scratch")
                run.reset_stage_dir(STAGE_DIR[stage])
            elif info.get("status") == "running":
                reporter.line(f"{stage}: resuming an unfinished run of this stage")
            if stage in NEEDS_RAY:
                ensure_ray(config, address)
            run.mark_started(stage)
            t0 = time.perf_counter()
            summary = _run_stage(stage, run, config, reporter, options)
            run.mark_done(stage, time.perf_counter() - t0, summary)
        reporter.line(f"coviax train: {', '.join(stages)} finished in {fmt_seconds(time.perf_counter() - t_all)}")
    finally:
        reporter.stop()
        shutdown_ray()
        run.unlock()
    return 0
