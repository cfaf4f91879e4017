"""What every statistic shares: the input error, the results' ``to_dict`` and the checks of inputs."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from coviax.errors import CoviaxError


class StatsInputError(CoviaxError, ValueError):
    """The input of a statistic is degenerate or malformed (the message says how)."""


class _AsDict:
    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-serialisable ``dict`` of plain Python types."""
        return {k: _plain(v) for k, v in asdict(self).items()}


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    return v


def _numeric(x: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(x, dtype=float)
    except (TypeError, ValueError) as exc:
        raise StatsInputError(f"{name} must be numeric: {exc}") from None


def _as_1d_float(x: Any, name: str) -> np.ndarray:
    a = _numeric(x, name)
    if a.ndim != 1:
        raise StatsInputError(f"{name} must be one-dimensional, got shape {a.shape}")
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        i = int(bad[0])
        kind = "NaN" if np.isnan(a[i]) else "an infinite value"
        more = f" (and {bad.size - 1} more)" if bad.size > 1 else ""
        raise StatsInputError(f"{name} contains {kind} at index {i}{more}")
    return a


def _as_truth(truth: Any, n: int | None = None) -> np.ndarray:
    t = np.asarray(truth)
    if t.ndim != 1:
        raise StatsInputError(f"truth must be one-dimensional, got shape {t.shape}")
    if t.dtype == bool:
        out = t.copy()
    else:
        try:
            tf = t.astype(float)
        except (TypeError, ValueError):
            raise StatsInputError(
                "truth must be boolean or 0/1, got non-numeric values "
                f"{sorted(set(map(str, t.tolist())))[:5]}"
            ) from None
        nan = np.flatnonzero(np.isnan(tf))
        if nan.size:
            raise StatsInputError(f"truth contains NaN at index {int(nan[0])}")
        bad = np.flatnonzero((tf != 0) & (tf != 1))
        if bad.size:
            raise StatsInputError(
                f"truth must be 0/1 (1 = positive), got {t[bad[0]]!r} at index {int(bad[0])}"
            )
        out = tf == 1
    if n is not None and out.size != n:
        raise StatsInputError(f"unequal lengths: truth has {out.size} values, score has {n}")
    return out


def _roc_inputs(truth: Any, score: Any, name: str = "score") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = _as_1d_float(score, name)
    t = _as_truth(truth, s.size)
    if s.size < 3:
        raise StatsInputError(f"need at least 3 cases, got {s.size}")
    n_pos = int(t.sum())
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        only = "positive" if n_neg == 0 else "negative"
        raise StatsInputError(
            f"truth has only one class (all {t.size} cases are {only}); "
            "ROC analysis needs both positives and negatives"
        )
    return t, s[t], s[~t]


def _check_finite(res: Any, what: str) -> None:
    for k, v in asdict(res).items():
        if isinstance(v, float) and not np.isfinite(v):
            raise StatsInputError(f"{what}: {k} is not finite for this input (degenerate data)")
