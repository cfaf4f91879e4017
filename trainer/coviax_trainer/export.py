"""Stage 6, export: the checkpoint the service loads and its model card.

Writes ``RUN/export/unet_b.pt`` (:func:`coviax.lesions.unet_model.save_checkpoint`
with the metadata below), ``unet_b.card.json`` and ``unet_b.card.md``; with
``export.install: true`` also copies them to ``coviax/models/`` where
:func:`coviax.lesions.unet.resolve_weights` finds the shipped U-Net B.

The weights file is rewritten only when U-Net B itself changed (its hash is
kept in the metadata), so re-running ``export`` after ``coviax eval`` refreshes
the card's held-out numbers without changing the weights' SHA-256.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import subprocess
from pathlib import Path

from coviax import RESEARCH_USE_NOTICE, __version__
from coviax_trainer.config import Config, relabel_set, stage1_scans, validation_ids
from coviax_trainer.errors import TrainError
from coviax_trainer.progress import Reporter
from coviax_trainer.rundir import RunDir, atomic_path, atomic_write, write_json

INTENDED_USE = "research use only, not a medical device"
NAME = "unet_b"


def code_version() -> str:
    """$COVIAX_CODE_VERSION, else ``git describe`` of the source tree, else the package version."""
    if os.environ.get("COVIAX_CODE_VERSION"):
        return os.environ["COVIAX_CODE_VERSION"]
    root = Path(__file__).resolve().parents[2]
    if (root / ".git").exists():
        try:
            out = subprocess.run(
                ["git", "describe", "--tags", "--always", "--dirty"], cwd=root, capture_output=True, text=True, timeout=5
            )
            if out.returncode == 0 and out.stdout.strip():
                return f"coviax {__version__} ({out.stdout.strip()})"
        except (OSError, subprocess.SubprocessError):
            pass
    return f"coviax {__version__}"


def shipped_dir() -> Path:
    from coviax.lesions.unet import SHIPPED_WEIGHTS

    return SHIPPED_WEIGHTS.parent


def build_meta(run: RunDir, config: Config, source_sha: str) -> dict:
    state = run.state()["stages"]
    a = state.get("unet-a", {}).get("summary", {})
    b = state.get("unet-b", {}).get("summary", {})
    s1 = stage1_scans(config)
    held = validation_ids(config)
    phantom_seeds = sorted({s.seed for s in s1 + relabel_set(config) if s.kind == "phantom"})
    tcfg = config.stage_train("unet-b")
    return {
        "name": NAME,
        "version": config.export.version,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "code_version": code_version(),
        "intended_use": INTENDED_USE,
        "notice": RESEARCH_USE_NOTICE,
        "source_sha256": source_sha,
        "model": dataclasses.asdict(config.model),
        "input": "one axial CT slice in HU, clipped to [-1024, 300] and scaled to [0, 1], resized (bilinear) "
                 "to input_size x input_size; output: logits of the 5 label codes of coviax/labels.py",
        "training_config": config.raw,
        "augmentation": dataclasses.asdict(tcfg.augmentation),
        "loss": tcfg.loss,
        "data": {
            "pipeline": "stage 1 K-means pseudo-labels (global mini-batch K-means on the 8 voxel features) -> "
                        "U-Net A -> U-Net A relabels a larger set (low-confidence slices dropped) -> U-Net B",
            "stage1_scans": [s.scan_id for s in s1],
            "relabel_scans": [s.scan_id for s in relabel_set(config)],
            "validation_scans": held,
            "phantom_seeds": phantom_seeds,
            "phantom_ground_truth_used": False,
            "pseudo_labels": state.get("pseudo-labels", {}).get("summary", {}),
            "relabel": state.get("relabel", {}).get("summary", {}),
            "unet_a_data": a.get("data", {}),
            "unet_b_data": b.get("data", {}),
        },
        "validation_vs_pseudo_labels": {"unet_a": a.get("final", {}), "unet_b": b.get("final", {})},
        "notes": list(config.export.notes),
    }


def read_eval(path: Path, weights_sha: str | None = None) -> dict | None:
    """Held-out numbers for the card from ``coviax eval``'s results.json (None if absent).

    Returns {"engines": {engine: {metric: value}}, "source": path, ...}; the
    metrics kept are the mean Dice of GGO, consolidation and all lesions and the
    mean absolute error of the ratios, per engine, as the evaluation reports them.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    from coviax_trainer.evalread import summarise

    return summarise(data, str(path), weights_sha)


def build_card(meta: dict, weights: Path, sha: str, evaluation: dict | None) -> dict:
    return {
        "model": NAME,
        "version": meta["version"],
        "file": weights.name,
        "sha256": sha,
        "size_bytes": weights.stat().st_size,
        "date": meta["date"],
        "code_version": meta["code_version"],
        "intended_use": INTENDED_USE,
        "notice": RESEARCH_USE_NOTICE,
        "architecture": {"type": "2D U-Net (coviax.lesions.unet_model.UNet2D)", **meta["model"]},
        "input": meta["input"],
        "training": {
            "pipeline": meta["data"]["pipeline"],
            "loss": meta["loss"],
            "augmentation": meta["augmentation"],
            "stage1_scans": meta["data"]["stage1_scans"],
            "relabel_scans": meta["data"]["relabel_scans"],
            "validation_scans": meta["data"]["validation_scans"],
            "phantom_seeds": meta["data"]["phantom_seeds"],
            "phantom_ground_truth_used": False,
            "unet_a_data": meta["data"]["unet_a_data"],
            "unet_b_data": meta["data"]["unet_b_data"],
            "relabel": meta["data"]["relabel"],
        },
        "validation_vs_pseudo_labels": meta["validation_vs_pseudo_labels"],
        "held_out_evaluation": evaluation,
        "notes": meta.get("notes", []),
    }


def card_markdown(card: dict) -> str:
    t = card["training"]
    lines = [
        f"# Model card: U-Net B ({card['model']} {card['version']})",
        "",
        f"**{card['notice']}** Intended use: {card['intended_use']}.",
        "",
        "## Model",
        "",
        f"- file `{card['file']}`, {card['size_bytes'] / 1e6:.2f} MB, SHA-256 `{card['sha256']}`",
        f"- architecture: {card['architecture']['type']}, depth {card['architecture']['depth']}, "
        f"width {card['architecture']['width']}, input {card['architecture']['input_size']} px",
        f"- input: {card['input']}",
        f"- built {card['date']} from {card['code_version']}",
        "",
        "## Training (weakly supervised, no manual labels)",
        "",
        f"- {t['pipeline']}",
        f"- stage-1 scans ({len(t['stage1_scans'])}): {', '.join(t['stage1_scans'])}",
        f"- relabelled scans ({len(t['relabel_scans'])}): {', '.join(t['relabel_scans'])}",
        f"- validation (held out from both trainings, scored against their K-means pseudo-labels): {', '.join(t['validation_scans'])}",
        f"- phantom seeds (training range only): {t['phantom_seeds']}; phantom ground truth never read by the trainer",
        f"- U-Net A data: {t['unet_a_data'].get('train_slices', '?')} slices; U-Net B data: {t['unet_b_data'].get('train_slices', '?')} slices; "
        f"relabel dropped {t['relabel'].get('dropped_low_confidence', '?')} low-confidence slices; "
        f"corrected slices: {t['unet_b_data'].get('corrected_slices', 0)}",
        f"- loss: {t['loss']}; augmentation: " + ", ".join(f"{k}={v}" for k, v in t["augmentation"].items()),
        "",
        "## Validation against held-out pseudo-labels (agreement with K-means, not accuracy)",
        "",
    ]
    for name, m in card["validation_vs_pseudo_labels"].items():
        vals = ", ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, (int, float)))
        lines.append(f"- {name}: {vals or 'n/a'}")
    lines += ["", "## Held-out evaluation (`coviax eval`, hybrid phantoms with evaluation seeds)", ""]
    ev = card.get("held_out_evaluation")
    if not ev:
        lines.append("Not run yet: run `coviax eval --out eval`, then `coviax train export` again to fill this in.")
    else:
        from coviax_trainer.evalread import table_markdown

        lines += table_markdown(ev)
    if card.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in card["notes"]]
    lines += [
        "",
        "## Limits",
        "",
        "- Trained on one real chest CT and hybrid phantoms made from it: it has seen one scanner, one patient "
        "anatomy and synthetic lesions. Its behaviour on other scanners, reconstruction kernels, slice thicknesses "
        "and real COVID-19 lesions is not measured.",
        "- The labels it learned from are K-means pseudo-labels (and U-Net A's relabelling of them); it inherits their biases.",
        "- The lung mask is not the network's: serving keeps the lung mask stage's cavity and takes vessel/GGO/consolidation "
        "from the network inside it.",
        "",
    ]
    return "\n".join(lines)


def run(run: RunDir, config: Config, reporter: Reporter) -> dict:
    from coviax.files import file_sha256
    from coviax.lesions.unet_model import load_checkpoint, save_checkpoint

    src = run.path("unet_b", "model.pt")
    if not src.is_file():
        raise TrainError("export: no U-Net B in this run folder; run `coviax train unet-b` first")
    src_sha = file_sha256(src)
    out_dir = run.path("export")
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / f"{NAME}.pt"
    meta = None
    if weights.is_file():
        _, old = load_checkpoint(weights)
        if old.get("source_sha256") == src_sha:
            meta = old
    if meta is None:
        model, _ = load_checkpoint(src)
        meta = build_meta(run, config, src_sha)
        with atomic_path(weights) as tmp:
            save_checkpoint(model, tmp, meta=meta)
    sha = file_sha256(weights)
    evaluation = read_eval(Path(config.export.eval_results), sha)
    card = build_card(dict(meta, notes=list(config.export.notes)), weights, sha, evaluation)
    write_json(out_dir / f"{NAME}.card.json", card)
    atomic_write(out_dir / f"{NAME}.card.md", card_markdown(card))
    size_mb = weights.stat().st_size / 1e6
    reporter.line(f"export: {weights} ({size_mb:.2f} MB, sha256 {sha[:12]}), card {out_dir / (NAME + '.card.md')}")
    installed = None
    if config.export.install:
        dest = shipped_dir()
        dest.mkdir(parents=True, exist_ok=True)
        for name in (f"{NAME}.pt", f"{NAME}.card.json", f"{NAME}.card.md"):
            with atomic_path(dest / name) as tmp:
                shutil.copyfile(out_dir / name, tmp)
        installed = str(dest / f"{NAME}.pt")
        reporter.line(f"export: installed as {installed} (what `--engine unet` loads by default)")
    if evaluation is None:
        reporter.line("export: no held-out evaluation found at " + config.export.eval_results + "; the card says so")
    return {"weights": str(weights), "sha256": sha, "size_mb": round(size_mb, 2), "installed": installed,
            "evaluation": bool(evaluation)}
