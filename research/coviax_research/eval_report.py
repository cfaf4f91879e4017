"""The outputs of ``coviax eval`` (:mod:`coviax_research.evaluate`): ``RESULTS.md``, ``results.json``
(format ``coviax.eval/1``, read by the trainer's model card), ``bland_altman.png`` and ``scatter.png``,
and the summary table the command prints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


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
    """RESULTS.md: how it was run, the real patients (when scored), the phantoms' summary, per case, the
    seed split and what the phantoms do not capture."""
    lines = _header_lines(results)
    if results.get("real"):
        from coviax_research.evaluate_real import real_markdown

        lines += ["## Real patients (no COVID-19) and phantoms of patients no shipped model saw", ""]
        lines += real_markdown(results["real"])
        lines += ["", "## Hybrid phantoms of the bundled CT", ""]
    lines += _summary_lines(results)
    lines += _per_case_lines(results)
    lines += _seed_split_lines(results)
    return "\n".join(lines)


def _header_lines(results: dict) -> list[str]:
    m = results["machine"]
    return [
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


def _summary_lines(results: dict) -> list[str]:
    lines = ["## Summary", ""]
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
    ]
    return lines


def _per_case_lines(results: dict) -> list[str]:
    lines = ["## Per case", ""]
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
    return lines


def _seed_split_lines(results: dict) -> list[str]:
    split = results["seed_split"]
    lines = [
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
    return lines


_MARKERS = {"threshold": "s", "kmeans": "o", "unet": "^"}


def write_plots(results: dict, out_dir: Path) -> dict[str, Path]:
    """scatter.png (predicted vs true VRall per engine) and bland_altman.png (one panel per engine)."""
    ok = [n for n, e in results["engines"].items() if e["status"] == "ok"]
    return {"scatter": _scatter_plot(results, ok, out_dir / "scatter.png"),
            "bland_altman": _bland_altman_plot(results, ok, out_dir / "bland_altman.png")}


def _scatter_plot(results: dict, ok: list[str], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    top = 1.0
    for name in ok:
        cases = results["engines"][name]["cases"]
        x = [c["true_ratios_pct"]["all"] for c in cases]
        y = [c["pred_ratios_pct"]["all"] for c in cases]
        top = max(top, *x, *y)
        ax.scatter(x, y, label=name, marker=_MARKERS.get(name, "o"), alpha=0.8)
    ax.plot([0, top * 1.05], [0, top * 1.05], "k--", lw=1, label="identity")
    ax.set_xlabel("true VRall (% of lung)")
    ax.set_ylabel("predicted VRall (% of lung)")
    ax.set_title("Hybrid phantoms: predicted vs true VRall")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def _bland_altman_plot(results: dict, ok: list[str], path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

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
        ax.scatter((t + p) / 2, p - t, marker=_MARKERS.get(name, "o"))
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
    fig.savefig(path, dpi=100)
    return path


def write_results(results: dict, out_dir: str | Path) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results_json": out / "results.json", "results_md": out / "RESULTS.md"}
    paths["results_json"].write_text(json.dumps(results, indent=2) + "\n")
    paths["results_md"].write_text(results_markdown(results))
    paths.update(write_plots(results, out))
    return paths
