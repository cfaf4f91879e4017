"""The exact-label recipe for U-Net B: several real patients, hybrid phantoms, clean scans, outlined tumours.

``python -m coviax_trainer.supervised --out RUN`` (``make train-exact``). The weakly supervised
recipe (K-means pseudo-labels -> U-Net A -> U-Net B, ``coviax train all``) learned from one patient
and from K-means's idea of a lesion, so on other people's healthy lungs it called the
partial-volume band at the lung's edge, the diaphragm dome and the heart border GGO. This recipe
teaches the same network (same :class:`coviax.lesions.unet_model.UNet2D`, same augmentation and
loss, same Ray Train loop) from labels that are right:

- **Hybrid phantoms of every training patient** (:data:`TRAIN_PATIENT_ROLE` cases of
  :mod:`coviax_research.realdata`) with the generator's exact labels, on the patient's *reference* lung
  (:func:`coviax_research.realdata.reference_lung_mask`, not the product's lung method).
- **The clean scans themselves** as hard negatives: every lung voxel is healthy lung or vessel
  (the phantoms' rule: vessel above -500 HU), so the edge band, fissures, airway walls and
  dependent density are taught as "not a lesion".
- **Outlined tumours** (the pycerr GTVs, drawn by people): consolidation where the tumour is
  denser than -300 HU, GGO between -750 and -300 HU -- real dense lesions, not synthetic ones.

Held-out patients (role ``heldout``) are never read. Scan building runs as Ray tasks (one per
case); training is :func:`coviax_trainer.train.fit`. Sized for about 15 minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from coviax.labels import Label

#: Phantoms made per training patient: (seed, severity, noise sigma HU). Training seeds only.
PHANTOMS = (
    (200, "mild", 0.0), (201, "moderate", 25.0), (202, "severe", 0.0), (203, "critical", 10.0),
    (204, "moderate", 0.0), (205, "mild", 25.0), (206, "severe", 25.0),
    (207, "none", 15.0), (208, "none", 30.0),  # the clean scan with low-dose noise: more hard negatives
)
#: Slices without lesions (the hard negatives) are drawn this often, as often as slices with
#: consolidation (1 + 2 k with the loop's lesion_oversample k = 2): on healthy lungs the partial-volume
#: band at the pleura, dependent density and streaks must be seen as often as lesions are.
HARD_NEGATIVE_DRAW_WEIGHT = 5.0
VALIDATION_PHANTOM = (290, "moderate", 10.0)  # per training patient, validation only
GTV_CONSOLIDATION_HU = -300.0
GTV_GGO_HU = -750.0
TRAIN_PATIENT_ROLE = "train"


def clean_labels(hu: np.ndarray, lung: np.ndarray) -> np.ndarray:
    """Labels of a scan with no COVID lesions: vessel above -500 HU in the lung, else healthy lung."""
    from coviax_research.phantom import VESSEL_HU

    labels = np.zeros(hu.shape, np.uint8)
    labels[lung] = np.where(hu[lung] > VESSEL_HU, np.uint8(Label.VESSEL), np.uint8(Label.HEALTHY_LUNG))
    return labels


def add_tumour(labels: np.ndarray, hu: np.ndarray, gtv: np.ndarray) -> np.ndarray:
    """An outlined tumour as opacity: consolidation above -300 HU, GGO from -750 to -300 HU."""
    labels = labels.copy()
    labels[gtv & (hu > GTV_GGO_HU)] = Label.GGO
    labels[gtv & (hu > GTV_CONSOLIDATION_HU)] = Label.CONSOLIDATION
    return labels


def case_examples(case_id: str, validation: bool = False) -> list[dict]:
    """(hu, labels, lung) stacks of the lung-holding slices of one training case: clean scan + phantoms."""
    from coviax_research import realdata
    from coviax.lungs import LungMask
    from coviax_research.phantom import make_phantom

    case = realdata.CASES_BY_ID[case_id]
    if case.role != TRAIN_PATIENT_ROLE:
        raise ValueError(f"{case_id} is a held-out patient; the trainer never reads it")
    volume = realdata.load_volume(case)
    lung = realdata.reference_lung_mask(case, volume)
    gtv = realdata.gtv_mask(case, volume)
    lung_labels = lung.astype(np.uint8)  # one label is enough for the phantom generator's layout
    out = []

    def add(name: str, hu: np.ndarray, labels: np.ndarray, mask: np.ndarray, tumour: np.ndarray | None) -> None:
        if tumour is not None:
            labels = add_tumour(labels, hu, tumour & mask)
        keep = np.flatnonzero(mask.any(axis=(1, 2)))
        out.append({"scan": f"{case_id}/{name}", "hu": hu[keep].astype(np.int16), "label": labels[keep],
                    "lung": mask[keep].astype(np.uint8)})

    if not validation:
        add("clean", volume.hu, clean_labels(volume.hu, lung), lung, gtv)
    if not case.phantoms:
        return out
    for seed, severity, noise in ((VALIDATION_PHANTOM,) if validation else PHANTOMS):
        phantom = make_phantom(volume, seed, severity, noise_sigma_hu=noise,
                               lungs=LungMask(labels=lung_labels, method="reference"))
        # the phantom's own grid: the generator flips z of a left-handed scan (LIDC-IDRI-0001's NIfTI is
        # one), so the source's tumour mask would land mirrored; the outline is re-rasterised by position
        tumour = realdata.gtv_mask(case, phantom.volume) if gtv is not None else None
        add(f"phantom-{seed}-{severity}", phantom.volume.hu, phantom.labels, phantom.lungs.labels > 0, tumour)
    return out


def build_arrays(case_ids: list[str], input_size: int, out_dir: Path, reporter, aspect: str = "pad") -> dict:
    """Ray tasks build each case's stacks; the driver resizes them as serving does and writes npz files."""
    import ray

    from coviax_trainer.data import SliceSet, to_network_arrays
    from coviax_trainer.objective import class_weights_from

    task = ray.remote(num_cpus=1)(case_examples)
    info: dict = {"train_scans": [], "val_scans": []}
    for split, validation in (("train", False), ("val", True)):
        slices = SliceSet([], [], [], [], [], [])
        for case_id, examples in zip(case_ids, ray.get([task.remote(c, validation) for c in case_ids])):
            for ex in examples:
                n = len(ex["hu"])
                slices.hu += list(ex["hu"])
                slices.label += list(ex["label"])
                slices.lung += list(ex["lung"])
                slices.scan += [ex["scan"]] * n
                slices.slice += list(range(n))
                slices.corrected += [False] * n
                info[f"{split}_scans"].append(ex["scan"])
        arrays = to_network_arrays(slices, input_size, aspect)
        lesion_free = ~((arrays["y"] >= Label.GGO).reshape(len(slices), -1).any(axis=1))
        arrays["draw_weight"] = np.where(lesion_free, HARD_NEGATIVE_DRAW_WEIGHT, 1.0).astype(np.float32)
        path = out_dir / f"{split}.npz"
        np.savez(path, **arrays)
        info[split] = str(path)
        info[f"{split}_slices"] = len(slices)
        if split == "train":
            counts = np.bincount(arrays["y"].ravel(), minlength=5)[:5]
            fractions = [float(c) / max(1, counts.sum()) for c in counts]
            info["class_weights"] = class_weights_from(fractions)
            info["train_label_fraction"] = {str(i): round(f, 5) for i, f in enumerate(fractions)}
        reporter.line(f"exact labels: {len(slices)} {split} slices from {len(info[f'{split}_scans'])} scans")
    return info


def lung_task_arrays(info: dict, data_dir: Path) -> dict:
    """The same slices with the reference lung as the target (1 lung, 0 not): the lung network's data.

    The inputs include the phantoms, whose consolidation reaches the pleura, so the network learns
    to keep dense lesions inside the lung without a morphological closing."""
    out = dict(info)
    for split in ("train", "val"):
        path = data_dir / f"{split}_lungs.npz"
        if not path.is_file():
            with np.load(info[split]) as z:
                lung = (z["lung"] > 0).astype(np.uint8)
                # what the lung network gets wrong is dense lung at the pleura: slices with consolidation
                # are drawn as often as the lesion task draws its hard negatives
                consolidation = (z["y"] == Label.CONSOLIDATION).reshape(len(lung), -1).any(axis=1)
                draw = np.where(consolidation, HARD_NEGATIVE_DRAW_WEIGHT, 1.0).astype(np.float32)
                np.savez(path, x=z["x"], y=lung, lung=np.ones_like(lung), draw_weight=draw)
        out[split] = str(path)
    fraction = float(np.load(out["train"])["y"].mean())
    out["class_weights"] = [1.0, float(np.clip(np.sqrt((1 - fraction) / max(fraction, 1e-6)), 1.0, 5.0))]
    return out


def heldout_patients() -> list[str]:
    from coviax_research import realdata

    return sorted({c.patient for c in realdata.CASES if c.role != TRAIN_PATIENT_ROLE})


def _fine_tuning_lines(recipe: dict) -> list[str]:
    """The card's lines on where a fine-tuned network started and the synthetic hard negatives it saw."""
    aug = recipe["train_config"]["augmentation"]
    lines = []
    if recipe.get("fine_tuned_from"):
        lines.append(f"- fine-tuned from the checkpoint with SHA-256 `{recipe['fine_tuned_from']}` (the previous shipped "
                     "model of this recipe), with this recipe's data and augmentation")
    if aug.get("streak_p") or aug.get("dependent_p"):
        lines.append("- synthetic hard negatives in the augmentation (labels unchanged): beam-hardening streaks from a "
                     f"dense point on {aug.get('streak_p', 0):.0%} of the slices, denser dependent lung at the posterior "
                     f"edge on {aug.get('dependent_p', 0):.0%}")
    return lines


def card_markdown(name: str, recipe: dict, sha: str, size_mb: float, evaluation: dict | None) -> str:
    """The model card of a network trained by this recipe: what it saw, what it was measured on."""
    from coviax import RESEARCH_USE_NOTICE

    task = recipe["task"]
    model = recipe["model"]
    data = recipe["data"]
    heldout = heldout_patients()
    scans = data["train_scans"]
    noisy_negatives = any("-none" in scan for scan in scans)
    weighted = recipe.get("hard_negative_draw_weight") is not None
    n_phantoms = len({scan.split("/")[1] for scan in scans if "/phantom-" in scan and "-none" not in scan})
    lines = [
        f"# Model card: {name}", "", f"**{RESEARCH_USE_NOTICE}**", "",
        "## Model", "",
        f"- file `{name}.pt`, {size_mb:.2f} MB, SHA-256 `{sha}`",
        f"- architecture: 2D U-Net (coviax.lesions.unet_model.UNet2D), depth {model['depth']}, width {model['width']}, "
        f"input {model['input_size']} px, {model['n_classes']} classes "
        + ("(0 not lung, 1 lung)" if task == "lungs" else "(codes of coviax/labels.py)"),
        "- input: one axial slice in HU, clipped to [-1024, 300], scaled to [0, 1], "
        + ("padded with air to a square (so a slice that is not square keeps its shape), then resized to the input size"
           if model.get("aspect") == "pad" else "the whole slice resized to the input size"),
        "", "## What it saw (the exact-label recipe, `coviax_trainer.supervised`)", "",
        f"- training patients: {', '.join(recipe['patients'])}",
        f"- never read (held-out patients): {', '.join(heldout)}",
        f"- {data['train_slices']} training slices from {len(data['train_scans'])} scans "
        f"({', '.join(data['train_scans'])}); {data['val_slices']} validation slices (one extra phantom per "
        "training patient)",
        "- per training patient: the clean scan (every lung voxel healthy lung, or vessel above -500 HU: the hard "
        "negatives" + (", also with 15 and 30 HU of added noise, seeds 207-208" if noisy_negatives else "")
        + (f"; lesion-free slices drawn {HARD_NEGATIVE_DRAW_WEIGHT:g}x as often as others" if weighted else "")
        + f"), {n_phantoms} hybrid phantoms (training seeds 200-206, mild to critical, 0-25 HU noise) with the "
        "generator's exact labels on the patient's reference lung, and the outlined tumour (pycerr GTV) as "
        "consolidation above -300 HU and GGO from -750 to -300 HU",
        "- target: " + ("the reference lung (the lung before lesions were inserted; tumours inside) -- inputs "
                        "include the phantoms' pleural consolidation" if task == "lungs" else
                        "the exact labels inside the reference lung, background outside"),
        f"- label shares in the training slices (codes 0-4): {data.get('train_label_fraction')}"
        + (" (the lung network's target is codes 1-4 together)" if task == "lungs" else ""),
        f"- {recipe['train_config']['epochs']} epochs x {recipe['train_config']['samples_per_epoch']} slices, batch "
        f"{recipe['train_config']['batch_size']}, Dice + CE with sqrt-inverse class weights, augmentation: "
        f"{recipe['train_config']['augmentation']}; {recipe['seconds']:.0f} s on the 2-core CPU machine",
        *_fine_tuning_lines(recipe),
        "- exact labels contribute all of the training signal; no K-means pseudo-label is used. The thesis's weakly "
        "supervised recipe (`coviax train all`) stays available and is documented in docs/TRAINING.md",
        f"- last epoch validation: {({k: round(v, 3) for k, v in recipe['history'][-1].items() if k.startswith('val_')})}",
        "", "## What it was measured on", "",
    ]
    if evaluation:
        lines += evaluation
    else:
        lines.append("- not yet measured: run `make eval` (eval/RESULTS.md)")
    lines += ["", "## Limits", "",
              f"- {len(recipe['patients'])} training patients' anatomy; synthetic COVID-like lesions and real tumours, "
              "no real COVID-19 lesion. Accuracy on COVID-19 patients is not measured.",
              "- Slices are resized whole to the input size, so a field of view very different from the training "
              "scans (0.98-2.2 mm per network pixel) changes the apparent lesion size.", ""]
    return "\n".join(lines)


def install(run: Path, name: str, evaluation: list[str] | None = None) -> Path:
    """Copy RUN/model.pt into coviax/models/NAME.pt and write NAME.card.md beside it."""
    from coviax.files import file_sha256

    recipe = json.loads((run / "recipe.json").read_text())
    with np.load(run / "data" / "train.npz") as z:  # the slices it really drew
        weighted = "draw_weight" in z.files
    recipe["hard_negative_draw_weight"] = HARD_NEGATIVE_DRAW_WEIGHT if weighted else None
    target = Path(__file__).resolve().parents[2] / "coviax" / "models"
    weights = target / f"{name}.pt"
    import torch

    payload = torch.load(run / "model.pt", map_location="cpu", weights_only=True)
    heldout = heldout_patients()
    payload["meta"] = {**payload.get("meta", {}), "name": name, "recipe": "exact-label (coviax_trainer.supervised)",
                       "model_card": f"{name}: 2D U-Net trained on exact labels of training patients "
                       f"{', '.join(recipe['patients'])} (hybrid phantoms, clean scans, outlined tumours); held-out "
                       f"patients {', '.join(heldout)} never read. Full card: coviax/models/{name}.card.md. "
                       "Research use only; not a medical device."}
    torch.save(payload, weights)
    sha = file_sha256(weights)
    card = card_markdown(name, recipe, sha, weights.stat().st_size / 1e6, evaluation)
    (target / f"{name}.card.md").write_text(card)
    return weights


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m coviax_trainer.supervised", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--samples-per-epoch", type=int, default=700)
    parser.add_argument("--input-size", type=int, default=192)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--task", choices=("lesions", "lungs"), default="lesions",
                        help="lesions: U-Net B (5 classes); lungs: the lung network (lung vs not, the reference "
                        "lung as target, scans with lesions at the pleura as input)")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--address", help="join this Ray cluster; default: a local Ray")
    parser.add_argument("--init", help="fine-tune: start from this checkpoint's weights (same depth, width, classes)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--aspect", choices=("pad", "stretch"), default="pad",
                        help="slices that are not square: padded with air to a square (default) or stretched")
    parser.add_argument("--streak-p", type=float, default=0.3,
                        help="share of slices given synthetic beam-hardening streaks (hard negatives)")
    parser.add_argument("--dependent-p", type=float, default=0.3,
                        help="share of slices given denser dependent lung (hard negatives)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    import ray

    from coviax.files import file_sha256
    from coviax_research import realdata
    from coviax_trainer.config import Augmentation, ModelConfig, TrainConfig
    from coviax_trainer.progress import Reporter
    from coviax_trainer.train import fit

    reporter = Reporter()
    out = Path(args.out).resolve()  # Ray Train and its workers need absolute paths (their cwd is elsewhere)
    (out / "data").mkdir(parents=True, exist_ok=True)
    cases = [c.id for c in realdata.available_cases(TRAIN_PATIENT_ROLE)]
    if not cases:
        raise SystemExit("no training patients in the data cache: run `make data` first")
    ray.init(address=args.address) if args.address else ray.init(num_cpus=2, include_dashboard=False,
                                                                  log_to_driver=False)
    t0 = time.perf_counter()
    info_path = out / "data" / "info.json"
    if info_path.is_file():
        info = json.loads(info_path.read_text())
    else:
        info = build_arrays(cases, args.input_size, out / "data", reporter, args.aspect)
        info_path.write_text(json.dumps(info, indent=1))
    n_classes = 5
    if args.task == "lungs":
        info = lung_task_arrays(info, out / "data")
        n_classes = 2
    model = ModelConfig(depth=args.depth, width=args.width, input_size=args.input_size)
    # Lung sizes differ threefold between a full chest and a crop of one side at the same input
    # size: the scale range is widened to cover both (serving resizes the whole slice).
    aug = Augmentation(scale=[0.7, 1.4], rotate_deg=15.0, streak_p=args.streak_p, dependent_p=args.dependent_p)
    tcfg = TrainConfig(epochs=args.epochs, samples_per_epoch=args.samples_per_epoch, batch_size=8, lr=args.lr,
                       ignore_border_px=0, keep="last", augmentation=aug, cpus_per_worker=2)
    stage = "unet-b-exact" if args.task == "lesions" else "lungs-unet"
    loop_cfg = {
        "stage": stage, "seed": args.seed,
        "model": {**dataclasses.asdict(model), "n_classes": n_classes, "aspect": args.aspect},
        "init_weights": str(Path(args.init).resolve()) if args.init else None,
        "train": dataclasses.asdict(tcfg), "train_data": info["train"], "val_data": info["val"],
        "threads": tcfg.cpus_per_worker, "class_weights": info["class_weights"],
    }
    history = fit(stage, loop_cfg, tcfg, out / "ray", out, reporter)
    meta = {"recipe": "exact", "task": args.task, "model": loop_cfg["model"], "patients": cases,
            "fine_tuned_from": file_sha256(args.init) if args.init else None,
            "data": {k: v for k, v in info.items() if k not in ("train", "val")},
            "train_config": dataclasses.asdict(tcfg), "history": history,
            "seconds": round(time.perf_counter() - t0, 1)}
    (out / "recipe.json").write_text(json.dumps(meta, indent=1))
    reporter.line(f"exact-label {stage}: {out / 'model.pt'} in {meta['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
