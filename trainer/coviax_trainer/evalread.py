"""Reading ``coviax eval``'s results.json (format ``coviax.eval/1``, owned by research/coviax_research/evaluate.py) for the model card."""

from __future__ import annotations

KNOWN_FORMATS = ("coviax.eval/1",)


def summarise(data: dict, source: str, weights_sha: str | None) -> dict | None:
    """Per-engine held-out numbers, and whether the evaluated U-Net is this very checkpoint.

    Returns None when the file is not an evaluation we know or holds no engine results.
    """
    if not isinstance(data, dict) or data.get("format") not in KNOWN_FORMATS:
        return None
    engines = {}
    for name, e in (data.get("engines") or {}).items():
        if e.get("status") != "ok" or e.get("lung_mask", "true") != "true":
            continue  # the card compares engines on the true lung mask; end-to-end rows mix in the lung method
        s = e.get("summary", {})
        ratio = s.get("abs_ratio_error_pp_mean") or {}
        icc = s.get("icc_vr_all") or {}
        engines[name] = {
            "dice_ggo": s.get("dice_ggo_mean"),
            "dice_consolidation": s.get("dice_consolidation_mean"),
            "dice_all": s.get("dice_all_mean"),
            "abs_ratio_error_pp_all": ratio.get("all"),
            "abs_ratio_error_pp_ggo": ratio.get("ggo"),
            "abs_ratio_error_pp_consolidation": ratio.get("consolidation"),
            "icc_vr_all": icc.get("icc"),
            "fp_lesion_ml_healthy": s.get("fp_lesion_ml_healthy_mean"),
            "seconds_per_case": s.get("seconds_per_case_mean"),
            "n_cases": s.get("n_cases"),
            "model": e.get("model"),
            "weights_sha256": e.get("weights_sha256"),
        }
    if not engines:
        return None
    out = {
        "source": source,
        "date": data.get("date"),
        "quick": bool(data.get("quick")),
        "suite_seeds": (data.get("seed_split") or {}).get("suite_seeds"),
        "n_cases": len(data.get("suite") or []),
        "lung_mask": "engines ran with the phantom's true lung mask",
        "engines": engines,
    }
    unet = engines.get("unet")
    if unet is not None:
        out["unet_is_this_checkpoint"] = bool(weights_sha and unet.get("weights_sha256") == weights_sha)
    if unet is not None and "kmeans" in engines:
        k = engines["kmeans"]

        def better(key: str, lower: bool = False):
            a, b = unet.get(key), k.get(key)
            if a is None or b is None:
                return None
            return a < b if lower else a > b

        out["unet_vs_kmeans"] = {
            "dice_ggo_higher": better("dice_ggo"),
            "dice_consolidation_higher": better("dice_consolidation"),
            "dice_all_higher": better("dice_all"),
            "abs_ratio_error_all_lower": better("abs_ratio_error_pp_all", lower=True),
        }
    return out


def _f(v, fmt=".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def table_markdown(ev: dict) -> list[str]:
    lines = [
        f"From `{ev['source']}` ({ev.get('date')}; {ev.get('n_cases')} phantoms, seeds {ev.get('suite_seeds')}"
        + ("; QUICK suite" if ev.get("quick") else "") + "). Engines ran with the phantom's true lung mask.",
        "",
        "| engine | Dice GGO | Dice cons | Dice all | mean abs VRall error (pp) | abs VRggo err | abs VRcs err | ICC VRall | FP mL healthy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in ev["engines"].items():
        lines.append(
            f"| {name} | {_f(m['dice_ggo'])} | {_f(m['dice_consolidation'])} | {_f(m['dice_all'])} | "
            f"{_f(m['abs_ratio_error_pp_all'], '.2f')} | {_f(m['abs_ratio_error_pp_ggo'], '.2f')} | "
            f"{_f(m['abs_ratio_error_pp_consolidation'], '.2f')} | {_f(m['icc_vr_all'])} | {_f(m['fp_lesion_ml_healthy'], '.1f')} |"
        )
    if "unet_is_this_checkpoint" in ev:
        lines += ["", "The `unet` row is " + ("this checkpoint (same SHA-256)." if ev["unet_is_this_checkpoint"]
                                              else "**another checkpoint** than this file (SHA-256 differs): re-run `coviax eval`.")]
    vs = ev.get("unet_vs_kmeans")
    if vs:
        def word(v):
            return "n/a" if v is None else ("yes" if v else "**no**")

        lines += ["", f"U-Net B vs K-means: higher Dice GGO {word(vs['dice_ggo_higher'])}, higher Dice consolidation "
                      f"{word(vs['dice_consolidation_higher'])}, lower VRall error {word(vs['abs_ratio_error_all_lower'])}."]
    return lines
