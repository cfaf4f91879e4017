"""``coviax stats``: the study statistics of the thesis from a CSV file.

Two sub-commands::

    coviax stats agreement FILE.csv [--json OUT.json]
    coviax stats roc FILE.csv --truth COL --score COL [--vs COL] [--json OUT.json]

``agreement`` reads long-form ratings (columns ``case``, ``rater``,
``value``) and prints n, raters, ICC(2,1) with its 95 % CI and, for exactly
two raters, the Bland-Altman bias, limits of agreement and critical
difference (differences = first rater - second rater, raters in order of
first appearance in the file).

``roc`` reads one row per case: the truth column (0/1 or true/false,
1 = positive) and one or two numeric score columns (higher = positive; a case
is called positive when score >= threshold).

Errors in the input print one line ``coviax stats: error: ...`` on stderr and
give exit code 2. The module runs standalone as
``python -m coviax_research.stats_cli [stats] {agreement,roc} ...``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from coviax.errors import CoviaxError
from coviax_research.stats import (
    StatsInputError,
    auc_binormal,
    bland_altman,
    delong_auc,
    delong_test,
    icc2_1,
    long_to_wide,
    youden,
)

__all__ = ["add_stats_parser", "main"]

_PROG = "coviax stats"
_TRUE = {"1", "1.0", "true", "t", "yes", "y"}
_FALSE = {"0", "0.0", "false", "f", "no", "n"}
_MISSING = {"", "na", "nan", "n/a", "null", "none"}


def add_stats_parser(subparsers: Any) -> None:
    """Register the ``stats`` sub-command (``agreement``, ``roc``).

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        The object returned by ``ArgumentParser.add_subparsers()``.

    Each leaf parser sets ``func``; call ``args.func(args)`` to run it. It
    returns the exit code (0, or 2 for input errors).
    """
    p = subparsers.add_parser(
        "stats",
        help="study statistics: rater agreement (ICC, Bland-Altman) and ROC analysis",
        description="Study statistics of the thesis: inter-rater agreement and ROC analysis.",
    )
    sub = p.add_subparsers(dest="stats_command", metavar="{agreement,roc}")
    sub.required = True

    a = sub.add_parser(
        "agreement",
        help="ICC(2,1) and Bland-Altman from long-form ratings (case, rater, value)",
        description=(
            "ICC(2,1) (two-way random, absolute agreement, single rater) with 95%% CI; "
            "for exactly two raters also Bland-Altman bias, limits of agreement and "
            "critical difference (first rater minus second, in order of appearance)."
        ),
    )
    a.add_argument("file", type=Path, help="CSV with columns case, rater, value")
    a.add_argument("--json", dest="json_out", type=Path, metavar="OUT.json",
                   help="also write the full results as JSON")
    a.set_defaults(func=_run_agreement)

    r = sub.add_parser(
        "roc",
        help="AUC (empirical, binormal, DeLong CI), Youden threshold, DeLong paired test",
        description=(
            "ROC analysis of a score against a binary truth (1/true = positive). Higher "
            "scores mean positive; a case is positive when score >= threshold."
        ),
    )
    r.add_argument("file", type=Path, help="CSV, one row per case")
    r.add_argument("--truth", required=True, metavar="COL", help="truth column (0/1 or true/false)")
    r.add_argument("--score", required=True, metavar="COL", help="score column")
    r.add_argument("--vs", metavar="COL", help="second score column for the DeLong paired test")
    r.add_argument("--json", dest="json_out", type=Path, metavar="OUT.json",
                   help="also write the full results as JSON")
    r.set_defaults(func=_run_roc)


# --------------------------------------------------------------------------- #
# CSV reading (csv module only)
# --------------------------------------------------------------------------- #
class _Table:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with open(path, newline="", encoding="utf-8-sig") as fh:
                reader = csv.reader(fh)
                rows: list[tuple[int, list[str]]] = []
                header: list[str] | None = None
                for rec in reader:
                    if header is None:
                        header = [h.strip() for h in rec]
                        continue
                    if not any(c.strip() for c in rec):
                        continue  # blank line
                    rows.append((reader.line_num, rec))
        except FileNotFoundError:
            raise StatsInputError(f"file not found: {path}") from None
        except IsADirectoryError:
            raise StatsInputError(f"{path} is a directory, expected a CSV file") from None
        except UnicodeDecodeError as exc:
            raise StatsInputError(f"{path} is not UTF-8 text: {exc.reason}") from None
        except csv.Error as exc:
            raise StatsInputError(f"{path} is not a valid CSV file: {exc}") from None
        except OSError as exc:
            raise StatsInputError(f"cannot read {path}: {exc.strerror or exc}") from None
        if header is None:
            raise StatsInputError(f"{path} is empty (no header line)")
        if not rows:
            raise StatsInputError(f"{path} has a header but no data rows")
        self.header = header
        self.rows = rows

    def _index(self, name: str) -> int:
        if name not in self.header:
            cols = ", ".join(repr(h) for h in self.header)
            raise StatsInputError(f"column {name!r} not found in {self.path}; columns are: {cols}")
        return self.header.index(name)

    def text(self, name: str) -> list[str]:
        j = self._index(name)
        out = []
        for line, rec in self.rows:
            cell = rec[j].strip() if j < len(rec) else ""
            if cell.lower() in _MISSING:
                raise StatsInputError(f"column {name!r} has a missing value at line {line} of {self.path}")
            out.append(cell)
        return out

    def numbers(self, name: str) -> list[float]:
        return self._parsed(name, _number)

    def truth(self, name: str) -> list[bool]:
        return self._parsed(name, _binary)

    def _parsed(self, name: str, parse: Any) -> list[Any]:
        """Each cell of a column through ``parse(cell, where)``; ``where`` names the column and line."""
        return [parse(cell, f"column {name!r} line {line}") for (line, _), cell in zip(self.rows, self.text(name))]


def _number(cell: str, where: str) -> float:
    try:
        v = float(cell)
    except ValueError:
        raise StatsInputError(f"{where}: {cell!r} is not a number") from None
    if not math.isfinite(v):
        raise StatsInputError(f"{where}: {cell!r} is not a finite number")
    return v


def _binary(cell: str, where: str) -> bool:
    c = cell.lower()
    if c in _TRUE:
        return True
    if c in _FALSE:
        return False
    raise StatsInputError(f"{where}: {cell!r} is not a binary truth (use 1/0 or true/false, 1 = positive)")


# --------------------------------------------------------------------------- #
# formatting
# --------------------------------------------------------------------------- #
def _f(x: float) -> str:
    return f"{x:.4f}"


def _g(x: float) -> str:
    return f"{x:.6g}"


def _row(label: str, text: str) -> str:
    return f"  {label:<28}{text}"


def _write_json(path: Path | None, payload: dict[str, Any]) -> None:
    if path is None:
        return
    try:
        path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    except OSError as exc:
        raise StatsInputError(f"cannot write {path}: {exc.strerror or exc}") from None


def _fraction(x: float | None, num: int, den: int, called: str = "") -> str:
    if x is None:
        return f"undefined (no case called {called})"
    return f"{_f(x)}  ({num}/{den})"


def _guard(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except CoviaxError as exc:
            print(f"{_PROG}: error: {exc}", file=sys.stderr)
            return 2

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


# --------------------------------------------------------------------------- #
# handlers
# --------------------------------------------------------------------------- #
@_guard
def _run_agreement(args: argparse.Namespace) -> int:
    """Handler of ``coviax stats agreement``."""
    tab = _Table(args.file)
    case = tab.text("case")
    rater = tab.text("rater")
    value = tab.numbers("value")
    mat, cases, raters = long_to_wide(case, rater, value)
    icc = icc2_1(mat)
    ba = bland_altman(mat[:, 0], mat[:, 1]) if len(raters) == 2 else None

    lines = [
        f"Inter-rater agreement ({args.file})",
        _row("cases", str(len(cases))),
        _row("raters", f"{len(raters)} ({', '.join(raters)})"),
        _row("ICC(2,1)", f"{_f(icc.icc)}  (95% CI {_f(icc.ci_low)} to {_f(icc.ci_high)})"),
    ]
    if ba is not None:
        lines += [
            f"  Bland-Altman ({raters[0]} - {raters[1]})",
            _row("  bias", f"{_g(ba.bias)}  (95% CI {_g(ba.bias_ci_low)} to {_g(ba.bias_ci_high)})"),
            _row("  SD of differences", _g(ba.sd)),
            _row("  95% limits of agreement", f"{_g(ba.loa_low)} to {_g(ba.loa_high)}"),
            _row("  critical difference", _g(ba.critical_difference)),
        ]
    else:
        lines.append(_row("Bland-Altman", f"not computed ({len(raters)} raters, needs exactly 2)"))
    print("\n".join(lines))

    _write_json(args.json_out, {
        "file": str(args.file),
        "n_cases": len(cases),
        "raters": raters,
        "icc2_1": icc.to_dict(),
        "bland_altman": None if ba is None else {
            "difference": f"{raters[0]} - {raters[1]}", **ba.to_dict()},
    })
    return 0


@_guard
def _run_roc(args: argparse.Namespace) -> int:
    """Handler of ``coviax stats roc``."""
    tab = _Table(args.file)
    truth = tab.truth(args.truth)
    score = tab.numbers(args.score)
    vs = tab.numbers(args.vs) if args.vs else None

    auc = delong_auc(truth, score)
    yd = youden(truth, score)
    try:
        bino = auc_binormal(truth, score)
        bino_err = None
    except StatsInputError as exc:
        bino, bino_err = None, str(exc)

    lines = [
        f"ROC analysis: score {args.score!r} vs truth {args.truth!r} ({args.file})",
        _row("cases", f"{len(truth)} ({auc.n_positive} positive, {auc.n_negative} negative)"),
        _row("AUC (empirical)", f"{_f(auc.auc)}  (95% CI {_f(auc.ci_low)} to {_f(auc.ci_high)}, DeLong)"),
        _row("AUC (binormal)",
             f"{_f(bino.auc)}  (a = {_g(bino.a)}, b = {_g(bino.b)}; OLS on probit scale)"
             if bino else f"not estimable: {bino_err}"),
        _row("Youden threshold", f"{_g(yd.threshold)}  (positive if score >= threshold; J = {_f(yd.j)})"),
        _row("sensitivity", _fraction(yd.sensitivity, yd.tp, yd.tp + yd.fn)),
        _row("specificity", _fraction(yd.specificity, yd.tn, yd.tn + yd.fp)),
        _row("PPV", _fraction(yd.ppv, yd.tp, yd.tp + yd.fp, "positive")),
        _row("NPV", _fraction(yd.npv, yd.tn, yd.tn + yd.fn, "negative")),
    ]
    payload: dict[str, Any] = {
        "file": str(args.file),
        "truth": args.truth,
        "score": args.score,
        "n": len(truth),
        "n_positive": auc.n_positive,
        "n_negative": auc.n_negative,
        "auc_empirical": auc.auc,
        "auc_ci95": [auc.ci_low, auc.ci_high],
        "delong": auc.to_dict(),
        "auc_binormal": None if bino is None else bino.auc,
        "binormal": None if bino is None else bino.to_dict(),
        "binormal_error": bino_err,
        "youden": {"rule": "positive if score >= threshold", **yd.to_dict()},
    }
    if vs is not None:
        lines += _versus(args, truth, score, vs, payload)
    print("\n".join(lines))
    _write_json(args.json_out, payload)
    return 0


def _versus(args: argparse.Namespace, truth: list[bool], score: list[float], vs: list[float],
            payload: dict[str, Any]) -> list[str]:
    """``--vs``: the second score's AUC and the DeLong test of the two (lines printed; added to ``payload``)."""
    auc2 = delong_auc(truth, vs)
    dt = delong_test(truth, score, vs)
    payload["vs"] = {"score": args.vs, "delong": auc2.to_dict()}
    payload["delong_test"] = dt.to_dict()
    return [
        f"  versus score {args.vs!r}",
        _row("  AUC (empirical)", f"{_f(auc2.auc)}  (95% CI {_f(auc2.ci_low)} to {_f(auc2.ci_high)}, DeLong)"),
        _row("  DeLong paired test",
             f"diff = {_f(dt.diff)} (95% CI {_f(dt.ci_low)} to {_f(dt.ci_high)}), "
             f"z = {_f(dt.z)}, p = {dt.p_value:.4g}"),
    ]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coviax", description="COViaX study statistics.")
    sub = parser.add_subparsers(dest="command", metavar="stats")
    sub.required = True
    add_stats_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``coviax stats ...`` standalone.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name, e.g.
        ``["stats", "roc", "f.csv", "--truth", "y", "--score", "s"]``; the
        leading ``"stats"`` may be omitted. Defaults to ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success, 2 on an input error (message on stderr) or a usage
        error reported by argparse.

    Raises
    ------
    None
        Input and usage errors are reported by the exit code.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] in ("agreement", "roc"):
        args_list = ["stats", *args_list]
    parser = _build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # usage error or --help
        return int(exc.code) if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
