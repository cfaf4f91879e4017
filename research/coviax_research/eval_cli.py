"""``coviax eval``: score the lesion engines on the hybrid-phantom suite (see :mod:`coviax_research.evaluate`).

    coviax eval [--engines threshold,kmeans,unet] [--out eval] [--cache eval/cache] [--quick]
                [--weights FILE] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_eval_parser(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="accuracy of the lesion engines on hybrid phantoms (writes RESULTS.md, results.json, plots)",
        description="Run the fixed suite of 12 hybrid phantoms (evaluation seeds 1000-1011, cached) through each "
        "engine with the true lung mask; print the summary table and write RESULTS.md, results.json, "
        "scatter.png and bland_altman.png.",
    )
    p.add_argument("--engines", default="threshold,kmeans,unet",
                   help="comma-separated engines (default threshold,kmeans,unet; the U-Net is skipped with a note "
                        "when no checkpoint is found)")
    p.add_argument("--out", default="eval", help="output folder (default eval)")
    p.add_argument("--cache", default=None, help="phantom cache folder (default OUT/cache)")
    p.add_argument("--no-cache", action="store_true", help="make every phantom afresh and store nothing")
    p.add_argument("--quick", action="store_true", help="2 cases on 4x down-sampled phantoms (a smoke test)")
    p.add_argument("--weights", help="U-Net checkpoint (default: $COVIAX_WEIGHTS or the shipped U-Net B)")
    p.add_argument("--device", default="cpu", help="device for the U-Net: cpu or cuda")
    p.add_argument("--real-lungs", default="auto,unet,classical",
                   help="lung methods for the real-patient rows (default auto,unet,classical: the default path "
                   "first); 'none' skips those rows, "
                   "which need the scans `make data` fetches")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from coviax.errors import OptionError
    from coviax_research.eval_report import format_table, write_results
    from coviax_research.evaluate import evaluate

    names = [n.strip() for n in args.engines.split(",") if n.strip()]
    if not names:
        raise OptionError("--engines is empty; give e.g. threshold,kmeans,unet")
    if len(set(names)) != len(names):
        raise OptionError(f"--engines names an engine twice: {args.engines}")
    out = Path(args.out)
    cache = None if args.no_cache else Path(args.cache) if args.cache else out / "cache"
    command = "coviax eval " + " ".join(a for a in sys.argv[2:]) if len(sys.argv) > 1 and sys.argv[1] == "eval" else None
    say = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    results = evaluate(names, cache_dir=cache, quick=args.quick, weights=args.weights, device=args.device,
                       progress=say, command=command)
    lung_methods = [m.strip() for m in args.real_lungs.split(",") if m.strip() and m.strip() != "none"]
    if lung_methods and not args.quick:
        results["real"] = _real_rows(names, lung_methods, args, say)
    paths = write_results(results, out)
    print(format_table(results))
    for name, e in results["engines"].items():
        if e["status"] != "ok":
            print(f"{name}: {e['note']}")
    if "real" in results:
        from coviax_research.evaluate_real import real_markdown

        print("\n".join(real_markdown(results["real"])))
    print(f"total {results['timing']['total_s']:.0f} s; written to {out.resolve()}: "
          + ", ".join(p.name for p in paths.values()))
    return 0


def _real_rows(names: list[str], lung_methods: list[str], args: argparse.Namespace, say) -> dict:
    """Real patients (coviax_research.evaluate_real) with the product's default engine, or the first one asked for."""
    import time

    from coviax.errors import OptionError
    from coviax_research.evaluate import build_engines
    from coviax_research.evaluate_real import evaluate_real
    from coviax.lungs import LUNG_METHODS

    for method in lung_methods:
        if method not in LUNG_METHODS:
            raise OptionError(f"--real-lungs {method!r}: choose from {', '.join(LUNG_METHODS)}")
    name = "unet" if "unet" in names else names[0]
    engines, skipped = build_engines([name], args.weights, args.device)
    if name not in engines:
        return {"engine": name, "skipped": skipped[name], "runs": {}, "cases_available": [], "cases_missing": []}
    started = time.perf_counter()
    real = evaluate_real(engines[name], name, tuple(lung_methods), progress=say)
    real["seconds"] = round(time.perf_counter() - started, 1)
    return real
