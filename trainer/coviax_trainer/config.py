"""The training config: one YAML file, checked strictly before any work starts.

Every key is declared here (dataclasses below); an unknown key, a wrong type, a
missing file or a phantom seed outside the training range is a
:class:`TrainConfigError` naming the key and the file, raised before Ray starts.

The scan entries (``scans``, ``relabel_scans``) are :mod:`coviax_trainer.scans`.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from coviax.lungs import LUNG_METHODS
from coviax_trainer.errors import TrainConfigError
from coviax_trainer.scans import ScanSpec, expand_scans, resolve_path


# --------------------------------------------------------------------------- schema


@dataclass
class RayConfig:
    num_cpus: int = 2  # for a local Ray (no --address); ignored when joining a cluster
    data_concurrency: int = 2  # scans processed at once in stages 1 and 4
    cpus_per_scan_task: int = 1


@dataclass
class Preprocess:
    """Applied to every scan after loading (phantoms: to the source CT before the lesions go in)."""

    downsample: int = 1  # integer in-plane factor (block mean); 1 = as read
    z_range: list[int] | None = None  # [start, stop) slice indices kept; None = all


@dataclass
class Validation:
    holdout: int = 2  # the last N stage-1 scans are held out (validation only)
    holdout_ids: list[str] | None = None  # or name them


@dataclass
class PseudoLabels:
    lung_method: str = "classical"  # one of coviax.lungs.LUNG_METHODS
    min_lung_pixels: int = 500  # slices with fewer lung pixels are not training data
    shard_slices: int = 16
    kmeans_samples_per_scan: int = 20000
    kmeans_batch_size: int = 4096
    # "hu_bands": equal shares of each scan's sample from the HU bands split at these
    # edges (default [-700,-400), [-400,-100), [-100,...)), so that the rare dense voxels
    # (consolidation) weigh in the fit; "uniform": a plain random sample
    kmeans_sampling: str = "hu_bands"
    kmeans_band_edges: list[float] = field(default_factory=lambda: [-400.0, -100.0])
    # in-plane opening of the lesion mask (disk of this radius, mm) after the clean-up:
    # thin shells of GGO/consolidation around vessels become vessel. 0 = off
    lesion_opening_mm: float = 1.5


@dataclass
class ModelConfig:
    depth: int = 4
    width: int = 16
    input_size: int = 256


@dataclass
class Augmentation:
    flip: bool = True  # left-right
    rotate_deg: float = 15.0
    scale: list[float] = field(default_factory=lambda: [0.85, 1.15])
    translate: float = 0.05  # fraction of the image
    noise_hu: list[float] = field(default_factory=lambda: [0.0, 25.0])  # additive Gaussian, sigma range
    blur_sigma_px: list[float] = field(default_factory=lambda: [0.3, 1.0])
    blur_p: float = 0.3
    hu_shift: float = 20.0  # uniform +-, HU
    contrast: list[float] = field(default_factory=lambda: [0.95, 1.05])
    p: float = 0.9  # probability that a slice is augmented at all
    # Hard negatives real scans have and our training patients lack (labels unchanged, so the network
    # learns they are not lesions): beam-hardening streaks radiating from a dense point (contrast in
    # the subclavian vein at the apex, metal), and denser dependent (posterior) lung in supine scans.
    streak_p: float = 0.0  # probability per slice
    streak_hu: list[float] = field(default_factory=lambda: [40.0, 200.0])  # peak amplitude range, HU
    dependent_p: float = 0.0
    dependent_hu: list[float] = field(default_factory=lambda: [30.0, 110.0])  # added at the posterior edge, HU


@dataclass
class TrainConfig:
    epochs: int = 4
    samples_per_epoch: int | None = None  # slices drawn per epoch; None = one pass over the set
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    loss: str = "dice_ce"  # dice_ce | gce | ce
    gce_q: float = 0.7
    dice_weight: float = 1.0
    class_weights: str = "sqrt_inverse"  # CE weights: sqrt_inverse (of each class's pixel share, from the data) | none
    lesion_oversample: float = 2.0  # slices with GGO / consolidation drawn (1 + k) / (1 + 2k) times as often
    # background pixels within this many network pixels of the lung mask are left out of the
    # loss: the classical lung mask cuts dense peripheral consolidation off, and serving
    # takes the cavity from the lung mask stage anyway. 0 = train on every pixel
    ignore_border_px: int = 4
    num_workers: int = 1  # Ray Train workers (one process each)
    use_gpu: bool = False
    cpus_per_worker: int = 2
    keep: str = "last"  # last | best (by validation Dice against held-out pseudo-labels)
    augmentation: Augmentation = field(default_factory=Augmentation)


@dataclass
class Relabel:
    # a slice's confidence: U-Net A's mean max-softmax over its lung pixels. Dropped: slices
    # below min_confidence, and the least confident drop_fraction of all relabelled slices.
    min_confidence: float = 0.0
    drop_fraction: float = 0.25
    batch_size: int = 8


@dataclass
class Corrections:
    import_dir: str | None = None  # imported by `all` (stage correct) when set


@dataclass
class Export:
    version: str = "1.0.0"
    install: bool = True  # also copy into coviax/models/ (what the service loads)
    eval_results: str = "eval/results.json"
    notes: list[str] = field(default_factory=list)  # free text for the model card (how the recipe was chosen, ...)


@dataclass
class Config:
    name: str = "default"
    seed: int = 0
    run_dir: str | None = None
    ray: RayConfig = field(default_factory=RayConfig)
    scans: list[dict] = field(default_factory=list)
    relabel_scans: list[dict] = field(default_factory=list)
    preprocess: Preprocess = field(default_factory=Preprocess)
    validation: Validation = field(default_factory=Validation)
    pseudo_labels: PseudoLabels = field(default_factory=PseudoLabels)
    corrections: Corrections = field(default_factory=Corrections)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    unet_a: dict = field(default_factory=dict)  # overrides of `train` for stage unet-a
    unet_b: dict = field(default_factory=dict)  # overrides of `train` for stage unet-b
    relabel: Relabel = field(default_factory=Relabel)
    export: Export = field(default_factory=Export)

    # filled by load_config
    path: str = ""
    raw: dict = field(default_factory=dict, repr=False)

    def stage_train(self, stage: str) -> TrainConfig:
        """``train`` with the stage's overrides applied (``unet_a`` / ``unet_b``)."""
        overrides = self.unet_a if stage == "unet-a" else self.unet_b
        merged = _deep_merge(dataclasses.asdict(self.train), overrides)
        return _build(TrainConfig, merged, f"{stage.replace('-', '_')}", self.path)

    def stage_digest(self, stage: str) -> str:
        """Hash of the config sections a stage's result depends on (to warn when a done stage is out of date)."""
        keys = {
            "pseudo-labels": ("scans", "preprocess", "pseudo_labels", "seed"),
            "correct": ("corrections",),
            "unet-a": ("model", "train", "unet_a", "validation", "seed"),
            "relabel": ("relabel", "relabel_scans", "validation"),
            "unet-b": ("model", "train", "unet_b", "validation", "seed"),
            "export": ("export",),
        }.get(stage, ())
        blob = json.dumps({k: self.raw.get(k) for k in keys}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def digest(self) -> str:
        """Hash of what decides the data (stage 1 scans and preprocessing); a run folder keeps one."""
        keys = ("scans", "preprocess", "pseudo_labels", "seed")
        blob = json.dumps({k: self.raw.get(k) for k in keys}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- loading

def load_config(path: str | Path) -> Config:
    """Read and check a training config.

    Raises
    ------
    TrainConfigError
        for a missing or unreadable file, an unknown key, a value of the wrong
        type, a missing scan file, or a phantom seed outside the training range.
    """
    path = Path(path)
    if not path.is_file():
        raise TrainConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise TrainConfigError(f"{path}: not valid YAML ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise TrainConfigError(f"{path}: expected a mapping of keys at the top level")
    config = _build(Config, data, "", str(path))
    config.path = str(path)
    config.raw = data
    _check(config)
    return config


def _build(cls, data: Any, prefix: str, config_path: str):
    if not isinstance(data, dict):
        raise TrainConfigError(f"{config_path}: {prefix or 'top level'} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.name not in ("path", "raw")]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TrainConfigError(f"{config_path}: unknown key {dotted!r}{hint}; known keys here: {', '.join(known)}")
        kwargs[key] = _coerce(hints[key], value, dotted, config_path)
    return cls(**kwargs)


def _coerce(hint, value, dotted: str, config_path: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, dotted, config_path)
    origin = get_origin(hint)
    args = get_args(hint)
    optional = type(None) in args
    if value is None:
        if optional or hint is Any:
            return None
        raise TrainConfigError(f"{config_path}: {dotted} may not be empty")
    if optional:
        hint = next(a for a in args if a is not type(None))
        origin, args = get_origin(hint), get_args(hint)
    if origin is list:
        if not isinstance(value, list):
            raise TrainConfigError(f"{config_path}: {dotted} must be a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(inner, v, f"{dotted}[{i}]", config_path) for i, v in enumerate(value)]
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise TrainConfigError(f"{config_path}: {dotted} must be a mapping, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise TrainConfigError(f"{config_path}: {dotted} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TrainConfigError(f"{config_path}: {dotted} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TrainConfigError(f"{config_path}: {dotted} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise TrainConfigError(f"{config_path}: {dotted} must be text, got {value!r}")
        return str(value)
    return value


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _check(config: Config) -> None:
    p = config.path
    if not config.scans:
        raise TrainConfigError(f"{p}: 'scans' is empty; list at least the scans for the pseudo-labels")
    scans = expand_scans(config.scans, "scans", p)
    relabel = expand_scans(config.relabel_scans, "relabel_scans", p)
    ids = [s.scan_id for s in scans + relabel]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise TrainConfigError(f"{p}: scan id(s) listed twice: {', '.join(dupes)}")
    holdout = validation_ids(config, scans)
    if len(holdout) >= len(scans):
        raise TrainConfigError(
            f"{p}: validation holds out {len(holdout)} of {len(scans)} stage-1 scans; at least one must be left for training"
        )
    for name in ("unet_a", "unet_b"):
        # overrides must be valid `train` keys
        _build(TrainConfig, _deep_merge(dataclasses.asdict(config.train), getattr(config, name)), name, p)
    for stage in ("unet-a", "unet-b"):
        t = config.stage_train(stage)
        if t.loss not in ("dice_ce", "gce", "ce"):
            raise TrainConfigError(f"{p}: train.loss {t.loss!r}: choose dice_ce, gce or ce")
        if t.class_weights not in ("sqrt_inverse", "none"):
            raise TrainConfigError(f"{p}: train.class_weights {t.class_weights!r}: choose sqrt_inverse or none")
        if t.keep not in ("last", "best"):
            raise TrainConfigError(f"{p}: train.keep {t.keep!r}: choose last or best")
        if t.epochs < 1 or t.batch_size < 1 or t.num_workers < 1:
            raise TrainConfigError(f"{p}: epochs, batch_size and num_workers must be at least 1")
    m = config.model
    if m.input_size % (2 ** (m.depth - 1)) or not 2 <= m.depth <= 6 or m.width < 4:
        raise TrainConfigError(f"{p}: model: depth 2..6, width >= 4 and input_size divisible by 2**(depth-1) (got {m})")
    if config.pseudo_labels.kmeans_sampling not in ("hu_bands", "uniform"):
        raise TrainConfigError(f"{p}: pseudo_labels.kmeans_sampling must be hu_bands or uniform")
    if config.pseudo_labels.lung_method not in LUNG_METHODS:
        raise TrainConfigError(f"{p}: pseudo_labels.lung_method must be one of {', '.join(LUNG_METHODS)}")
    if config.preprocess.downsample < 1:
        raise TrainConfigError(f"{p}: preprocess.downsample must be >= 1")
    zr = config.preprocess.z_range
    if zr is not None and (len(zr) != 2 or zr[0] < 0 or zr[1] <= zr[0]):
        raise TrainConfigError(f"{p}: preprocess.z_range must be [start, stop) with 0 <= start < stop")
    if not 0.0 <= config.relabel.min_confidence <= 1.0:
        raise TrainConfigError(f"{p}: relabel.min_confidence must be in [0, 1]")
    if not 0.0 <= config.relabel.drop_fraction < 1.0:
        raise TrainConfigError(f"{p}: relabel.drop_fraction must be in [0, 1)")
    if config.corrections.import_dir and resolve_path(config.corrections.import_dir, p) is None:
        raise TrainConfigError(f"{p}: corrections.import_dir {config.corrections.import_dir!r} not found")


def validation_ids(config: Config, scans: list[ScanSpec] | None = None) -> list[str]:
    scans = scans if scans is not None else expand_scans(config.scans, "scans", config.path)
    ids = [s.scan_id for s in scans]
    if config.validation.holdout_ids:
        unknown = [i for i in config.validation.holdout_ids if i not in ids]
        if unknown:
            raise TrainConfigError(f"{config.path}: validation.holdout_ids {unknown} are not stage-1 scans ({', '.join(ids)})")
        return list(config.validation.holdout_ids)
    n = config.validation.holdout
    return ids[len(ids) - n:] if n > 0 else []


def stage1_scans(config: Config) -> list[ScanSpec]:
    return expand_scans(config.scans, "scans", config.path)


def relabel_set(config: Config) -> list[ScanSpec]:
    """Stage 4's scans: the stage-1 training scans plus ``relabel_scans`` (held-out scans stay out)."""
    held = set(validation_ids(config))
    return [s for s in stage1_scans(config) if s.scan_id not in held] + expand_scans(
        config.relabel_scans, "relabel_scans", config.path
    )


def resolve_import_dir(config: Config) -> Path | None:
    if not config.corrections.import_dir:
        return None
    return resolve_path(config.corrections.import_dir, config.path)
