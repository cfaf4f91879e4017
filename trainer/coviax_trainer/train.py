"""Stages 3 and 5, unet-a / unet-b: the 2D U-Net on a label set, with Ray Train.

The driver turns the label set (corrections applied) into network-sized
arrays exactly as serving resizes slices (:func:`coviax_trainer.data.to_network_arrays`),
splits off the held-out scans for validation, and starts a
:class:`ray.train.torch.TorchTrainer` with ``ScalingConfig(num_workers, use_gpu)``
from the config. Each worker:

- builds :class:`coviax.lesions.unet_model.UNet2D` (the serving definition);
- augments every batch on the fly (:func:`coviax_trainer.objective.augment`): left-right flip,
  rotation, scaling, translation, HU shift and contrast, Gaussian blur,
  additive Gaussian noise -- all in the [-1024, 300] HU window of
  :func:`coviax.lesions.unet_model.normalise_hu`;
- minimises a loss that tolerates noisy labels (:func:`coviax_trainer.objective.loss_fn`): Dice + CE by
  default, or the generalized cross-entropy of Zhang & Sabuncu (2018);
- after every epoch, rank 0 scores the held-out scans (Dice against their
  stage-1 pseudo-labels, inside the lung mask) and reports a checkpoint with
  ``ray.train.report``.

Re-running a stage that was stopped resumes from the last reported checkpoint
(Ray Train restores it from ``RUN/<stage>/ray`` when the run name matches).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np

from coviax_trainer.config import Config, validation_ids
from coviax_trainer.errors import TrainError
from coviax_trainer.data import load_slices, to_network_arrays
from coviax_trainer.objective import IGNORE, augment, class_weights_from, combine, dice_scores, loss_fn
from coviax_trainer.progress import ActorPoller, Reporter, fmt_seconds, make_progress_actor
from coviax_trainer.rundir import RunDir, atomic_path, write_json

STAGE_DIRS = {"unet-a": "unet_a", "unet-b": "unet_b"}
STAGE_SETS = {"unet-a": "pseudo", "unet-b": "relabel"}


# --------------------------------------------------------------------------- the worker loop

def train_loop(cfg: dict) -> None:
    """Ray Train worker function (one per worker process)."""
    import ray.train
    import ray.train.torch
    import torch

    from coviax.lesions.unet_model import UNet2D, UNetConfig

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(cfg["threads"])))
    t = cfg["train"]
    progress = cfg.get("progress")

    def push(event):
        if progress is not None and rank == 0:
            progress.push.remote(event)

    x_all, y_all, draw_weights, val = _load_data(cfg)
    per_epoch = int(t["samples_per_epoch"] or len(x_all))
    steps_per_epoch = max(1, math.ceil(per_epoch / world / t["batch_size"]))
    total_steps = steps_per_epoch * t["epochs"]

    torch.manual_seed(cfg["seed"])
    model = UNet2D(UNetConfig(**cfg["model"]))
    opt = torch.optim.AdamW(model.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=t["lr"], total_steps=total_steps, pct_start=0.15)
    start_epoch, history, best = _resume(model, opt, sched, push)
    if start_epoch == 0 and cfg.get("init_weights"):  # fine-tuning: start from a trained network's weights
        from coviax.lesions.unet_model import load_checkpoint

        model.load_state_dict(load_checkpoint(cfg["init_weights"])[0].state_dict())

    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(model)
    core = model.module if hasattr(model, "module") else model
    steps = {"per_epoch": steps_per_epoch, "total": total_steps}

    for epoch in range(start_epoch, t["epochs"]):
        t0 = time.perf_counter()
        order = torch.Generator().manual_seed(cfg["seed"] * 7919 + epoch)
        idx = torch.multinomial(draw_weights, per_epoch, replacement=True, generator=order)[rank::world]
        losses = _train_epoch(cfg, model, opt, sched, x_all, y_all, idx, epoch, rank, device, steps, push)
        metrics = {"epoch": epoch, "loss": float(np.mean(losses)), "lr": float(sched.get_last_lr()[0]),
                   "epoch_seconds": round(time.perf_counter() - t0, 1)}
        if rank == 0:
            best = _score_epoch(core, metrics, best, val, device, epoch)
        history.append(metrics)
        push({"kind": "epoch", **metrics, "epochs": t["epochs"]})
        _report_epoch(cfg, core, opt, sched, metrics, history, best, epoch, rank)


def _load_data(cfg: dict):
    """The training slices, their draw weights and the validation set (x, y, lung), as tensors."""
    import torch

    with np.load(cfg["train_data"]) as z:
        x_all, y_all = torch.from_numpy(z["x"]), torch.from_numpy(z["y"])
        given_weights = torch.from_numpy(z["draw_weight"]).float() if "draw_weight" in z.files else None
    with np.load(cfg["val_data"]) as z:
        val = (torch.from_numpy(z["x"]), torch.from_numpy(z["y"]), torch.from_numpy(z["lung"]))
    flat = y_all.reshape(len(x_all), -1)
    has_lesion = ((flat >= 3) & (flat <= 4)).any(dim=1).float()
    has_cons = (flat == 4).any(dim=1).float()
    k = float(cfg["train"]["lesion_oversample"])
    draw_weights = 1.0 + k * has_lesion + k * has_cons
    if given_weights is not None:  # the data's own weights, e.g. hard negatives drawn as often as lesions
        draw_weights = torch.maximum(draw_weights, given_weights)
    return x_all, y_all, draw_weights, val


def _resume(model, opt, sched, push) -> tuple[int, list, dict]:
    """Load Ray's last checkpoint into the model, optimiser and scheduler, if there is one; returns the
    epoch to start at, the history so far and the best epoch so far."""
    import ray.train
    import torch

    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return 0, [], {"score": -1.0, "state": None, "epoch": None}
    with checkpoint.as_directory() as d:
        state = torch.load(Path(d) / "train_state.pt", map_location="cpu", weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    start_epoch = state["epoch"] + 1
    push({"kind": "resume", "epoch": start_epoch})
    return start_epoch, state["history"], state["best"]


def _train_epoch(cfg, model, opt, sched, x_all, y_all, idx, epoch, rank, device, steps, push) -> list[float]:
    """One epoch over this worker's share ``idx`` of the drawn slices; returns the loss of each step."""
    import torch

    t = cfg["train"]
    class_weights = cfg.get("class_weights") if t["class_weights"] == "sqrt_inverse" else None
    g = torch.Generator().manual_seed(cfg["seed"] * 100_003 + epoch * 1009 + rank)
    steps_per_epoch = steps["per_epoch"]
    model.train()
    losses = []
    for step in range(steps_per_epoch):
        b = idx[step * t["batch_size"] : (step + 1) * t["batch_size"]]
        if len(b) == 0:
            b = idx[: t["batch_size"]]
        xb = x_all[b].float()[:, None]
        yb = y_all[b].long()
        xb, yb = augment(xb, yb, t["augmentation"], g)
        logits = model(xb.to(device))
        loss = loss_fn(logits, yb.to(device), t["loss"], t["gce_q"], t["dice_weight"], class_weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % max(1, steps_per_epoch // 20) == 0 or step == steps_per_epoch - 1:
            push({"kind": "step", "epoch": epoch, "step": step + 1, "steps": steps_per_epoch,
                  "global": epoch * steps_per_epoch + step + 1, "total": steps["total"],
                  "loss": float(np.mean(losses[-20:]))})
    return losses


def _score_epoch(core, metrics: dict, best: dict, val, device, epoch: int) -> dict:
    """Add the validation Dice and score to ``metrics``; returns the best epoch so far (this one if better)."""
    metrics.update({f"val_dice_{k}": v for k, v in validate(core, *val, device).items()})
    # a lung network (2 classes) is scored by its lung Dice, a lesion network by GGO and consolidation
    score = metrics["val_dice_lung"] if core.config.n_classes == 2 else np.nanmean(
        [metrics["val_dice_ggo"], metrics["val_dice_cons"]])
    metrics["val_score"] = float(score) if not np.isnan(score) else 0.0
    if metrics["val_score"] > best["score"]:
        best = {"score": metrics["val_score"], "epoch": epoch,
                "state": {k: v.detach().cpu().clone() for k, v in core.state_dict().items()}}
    return best


def _report_epoch(cfg, core, opt, sched, metrics, history, best, epoch, rank) -> None:
    """Report the epoch to Ray; rank 0 adds a checkpoint (this epoch's model, the best one, the train state)."""
    import ray.train
    import torch

    from coviax.lesions.unet_model import UNet2D, UNetConfig, save_checkpoint

    with tempfile.TemporaryDirectory() as d:
        report_ckpt = None
        if rank == 0:
            meta = {"name": cfg["stage"].replace("-", "_"), "epoch": epoch, "val": {k: v for k, v in metrics.items() if k.startswith("val_")}}
            save_checkpoint(core, Path(d) / "model.pt", meta=meta)
            if best["state"] is not None:
                best_model = UNet2D(UNetConfig(**cfg["model"]))
                best_model.load_state_dict(best["state"])
                save_checkpoint(best_model, Path(d) / "best.pt", meta={**meta, "epoch": best["epoch"]})
            torch.save({"model": core.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "epoch": epoch, "history": history, "best": best}, Path(d) / "train_state.pt")
            (Path(d) / "history.json").write_text(json.dumps(history, indent=1))
            report_ckpt = ray.train.Checkpoint.from_directory(d)
        ray.train.report(metrics, checkpoint=report_ckpt)


def validate(model, xv, yv, lv, device, batch: int = 16) -> dict:
    import torch

    if len(xv) == 0:
        return {"ggo": float("nan"), "cons": float("nan"), "lesion": float("nan"), "vessel": float("nan")}
    model.eval()
    preds = []
    with torch.inference_mode():
        for s in range(0, len(xv), batch):
            logits = model(xv[s : s + batch].float()[:, None].to(device))
            preds.append(logits.argmax(1).cpu())
    model.train()
    if model.config.n_classes == 2:  # lung network: y is the lung mask itself
        return dice_scores(torch.cat(preds).to(torch.uint8), yv, classes=(("lung", (1,)),))
    pred = combine(torch.cat(preds).to(torch.uint8), lv)
    truth = torch.where(lv > 0, yv, torch.zeros_like(yv))
    return dice_scores(pred, truth)


# --------------------------------------------------------------------------- the driver

def prepare_data(run: RunDir, stage: str, config: Config, reporter: Reporter) -> dict:
    """Write RUN/<stage>/data/{train,val}.npz (idempotent) and return their paths and counts."""
    d = run.path(STAGE_DIRS[stage], "data")
    train_p, val_p, info_p = d / "train.npz", d / "val.npz", d / "info.json"
    if train_p.is_file() and val_p.is_file() and info_p.is_file():
        return json.loads(info_p.read_text())
    held = set(validation_ids(config))
    set_name = STAGE_SETS[stage]
    train = load_slices(run, set_name)
    keep = [i for i, s in enumerate(train.scan) if s not in held]
    for attr in ("hu", "label", "lung", "scan", "slice", "corrected"):
        setattr(train, attr, [getattr(train, attr)[i] for i in keep])
    val = load_slices(run, "pseudo", scans=held)
    if len(train) == 0:
        hint = " (relabel dropped every slice: lower relabel.min_confidence)" if set_name == "relabel" else ""
        raise TrainError(f"{stage}: no training slices in the {set_name} set{hint}")
    size = config.model.input_size
    arrays = to_network_arrays(train, size)
    varrays = to_network_arrays(val, size)
    arrays["y"] = ignore_lung_border(arrays["y"], arrays["lung"], config.stage_train(stage).ignore_border_px)
    d.mkdir(parents=True, exist_ok=True)
    for path, arr in ((train_p, arrays), (val_p, varrays)):
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arr)
    counts = np.bincount(arrays["y"].ravel(), minlength=256)[:5]
    fractions = [float(c) / max(1, counts.sum()) for c in counts]
    info = {
        "class_weights": class_weights_from(fractions),
        "set": set_name, "train_slices": len(train), "val_slices": len(val),
        "train_scans": sorted(set(train.scan)), "val_scans": sorted(held),
        "corrected_slices": int(sum(train.corrected)),
        "train_label_fraction": {str(i): round(float(c) / max(1, counts.sum()), 5) for i, c in enumerate(counts)},
        "train": str(train_p), "val": str(val_p),
    }
    write_json(info_p, info)
    return info


def ignore_lung_border(y: np.ndarray, lung: np.ndarray, px: int) -> np.ndarray:
    """Background pixels within ``px`` pixels of the lung mask -> IGNORE (left out of the loss)."""
    if px <= 0:
        return y
    from scipy import ndimage

    near = ndimage.binary_dilation(lung > 0, structure=np.ones((1, 3, 3), bool), iterations=int(px))
    y = y.copy()
    y[near & (lung == 0) & (y == 0)] = IGNORE
    return y


def run(run: RunDir, config: Config, reporter: Reporter, stage: str) -> dict:
    t0 = time.perf_counter()
    tcfg = config.stage_train(stage)
    info = prepare_data(run, stage, config, reporter)
    reporter.line(
        f"{stage}: {info['train_slices']} training slices from {len(info['train_scans'])} scans "
        f"({info['corrected_slices']} corrected), {info['val_slices']} validation slices from {len(info['val_scans'])} held-out scans"
    )
    per_epoch = tcfg.samples_per_epoch or info["train_slices"]
    reporter.line(
        f"{stage}: {tcfg.epochs} epochs x {per_epoch} slices, batch {tcfg.batch_size}, loss {tcfg.loss}, "
        f"{tcfg.num_workers} worker(s){' with GPU' if tcfg.use_gpu else ' on CPU'}, input {config.model.input_size}px"
    )
    loop_cfg = {
        "stage": stage, "seed": config.seed, "model": dataclasses.asdict(config.model), "train": dataclasses.asdict(tcfg),
        "train_data": info["train"], "val_data": info["val"], "threads": tcfg.cpus_per_worker,
        "class_weights": info.get("class_weights"),
    }
    out = run.path(STAGE_DIRS[stage])
    history = fit(stage, loop_cfg, tcfg, run.path(STAGE_DIRS[stage], "ray"), out, reporter)
    last = history[-1] if history else {}
    reporter.line(f"{stage}: done in {fmt_seconds(time.perf_counter() - t0)}; model {out / 'model.pt'}")
    return {
        "model": str(out / "model.pt"), "epochs": len(history), "kept": tcfg.keep,
        "final": {k: v for k, v in last.items() if k.startswith(("val_", "loss"))},
        "data": {k: v for k, v in info.items() if k not in ("train", "val")},
        "train_config": dataclasses.asdict(tcfg),
    }


def fit(stage: str, loop_cfg: dict, tcfg, storage: Path, out: Path, reporter: Reporter) -> list[dict]:
    """Train with Ray Train (:func:`train_loop` on ``tcfg.num_workers`` workers); writes ``out/model.pt``.

    ``loop_cfg`` names the data (``train_data``/``val_data`` npz files with x, y, lung), the model
    config and the train config as dicts. Shared by the weakly supervised stages and the
    exact-label recipe (:mod:`coviax_trainer.supervised`). Returns the per-epoch history.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    actor = make_progress_actor()
    loop_cfg = {**loop_cfg, "progress": actor}
    storage.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=loop_cfg,
        scaling_config=ScalingConfig(
            num_workers=tcfg.num_workers, use_gpu=tcfg.use_gpu,
            resources_per_worker={"CPU": tcfg.cpus_per_worker, **({"GPU": 1} if tcfg.use_gpu else {})},
        ),
        run_config=RunConfig(
            name=stage, storage_path=str(storage),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=0),
        ),
    )
    state = {"started": False}

    def handle(ev: dict) -> None:
        if ev["kind"] == "resume":
            reporter.line(f"{stage}: resuming from the checkpoint after epoch {ev['epoch']}")
        elif ev["kind"] == "step":
            if not state["started"]:
                reporter.start(f"{stage} training", ev["total"])
                state["started"] = True
            reporter.update(ev["global"], f"epoch {ev['epoch'] + 1} loss {ev['loss']:.3f}")
        elif ev["kind"] == "epoch":
            scores = "  ".join(f"{k[len('val_dice_'):]} {v:.3f}" for k, v in ev.items() if k.startswith("val_dice_"))
            reporter.line(f"{stage} epoch {ev['epoch'] + 1}/{ev['epochs']}: loss {ev['loss']:.4f}  val dice {scores}  "
                          f"({ev['epoch_seconds']:.0f} s)")

    with ActorPoller(actor, handle):
        result = trainer.fit()
    reporter.stop()
    if result.checkpoint is None:
        raise TrainError(f"{stage}: Ray Train finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        history = json.loads((Path(d) / "history.json").read_text())
        if len(history) < tcfg.epochs:  # e.g. Ctrl-C: Ray Train aborts the run gracefully and returns
            raise TrainError(
                f"{stage}: training stopped after epoch {len(history)} of {tcfg.epochs}; "
                "run the same command again to resume from that checkpoint"
            )
        src = Path(d) / ("best.pt" if tcfg.keep == "best" and (Path(d) / "best.pt").is_file() else "model.pt")
        with atomic_path(out / "model.pt") as tmp:
            Path(tmp).write_bytes(src.read_bytes())
    write_json(out / "history.json", history)
    return history
