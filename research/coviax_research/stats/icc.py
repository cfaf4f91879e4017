"""ICC(2,1): two-way random effects, absolute agreement, single measure, with the F-based CI of
McGraw & Wong (1996)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats as _st

from coviax_research.stats._common import StatsInputError, _as_1d_float, _AsDict, _check_finite, _numeric

# A mean square at or below this fraction of the total mean square is treated
# as exactly zero (rounding noise of perfectly additive data).
_ZERO_REL = 1e-12


@dataclass(frozen=True)
class ICCResult(_AsDict):
    """ICC(2,1) with its F-based confidence interval.

    Attributes
    ----------
    icc : float
        ICC(2,1) = (MSR - MSE) / (MSR + (k-1) MSE + k (MSC - MSE) / n).
    ci_low, ci_high : float
        Bounds of the ``1 - alpha`` confidence interval (McGraw & Wong 1996,
        case 2A; identical to pingouin's ``ICC2`` / ``ICC(A,1)`` row).
    alpha : float
        1 - confidence level.
    f : float
        F = MSR / MSE for H0: ICC = 0.
    df1, df2 : int
        Degrees of freedom of that F (n-1, (n-1)(k-1)).
    p_value : float
        One-sided p-value of the F-test.
    n_cases, n_raters : int
        Size of the complete cases x raters matrix.
    ms_rows, ms_cols, ms_error : float
        Two-way ANOVA mean squares: between cases (MSR), between raters
        (MSC), residual (MSE).
    """

    icc: float
    ci_low: float
    ci_high: float
    alpha: float
    f: float
    df1: int
    df2: int
    p_value: float
    n_cases: int
    n_raters: int
    ms_rows: float
    ms_cols: float
    ms_error: float


def long_to_wide(
    case: Sequence[Any], rater: Sequence[Any], value: Sequence[Any]
) -> tuple[np.ndarray, list[Any], list[Any]]:
    """Pivot long-form ratings to a complete cases x raters matrix.

    Parameters
    ----------
    case, rater : sequence
        Case and rater label of each rating (any hashable values).
    value : sequence of float
        The rating.

    Returns
    -------
    matrix : numpy.ndarray, shape (n_cases, n_raters)
        Ratings; rows follow the first appearance of each case, columns the
        first appearance of each rater.
    cases, raters : list
        The row and column labels.

    Raises
    ------
    StatsInputError
        Unequal lengths, a NaN/infinite value (the row is named), a duplicate
        (case, rater) pair, or a missing rating (the case and rater are named).
    """
    c = list(case)
    r = list(rater)
    n = len(c)
    if len(r) != n or len(value) != n:
        raise StatsInputError(
            f"unequal lengths: case has {n}, rater has {len(r)}, value has {len(value)} entries"
        )
    v = _as_1d_float(value, "value")
    bad = np.flatnonzero(~np.isfinite(v))
    if bad.size:  # pragma: no cover - caught by _as_1d_float
        raise StatsInputError(f"value is not finite in row {int(bad[0])}")
    cases: dict[Any, int] = {}
    raters: dict[Any, int] = {}
    for ci in c:
        cases.setdefault(ci, len(cases))
    for ri in r:
        raters.setdefault(ri, len(raters))
    m = np.full((len(cases), len(raters)), np.nan)
    for row, (ci, ri, vi) in enumerate(zip(c, r, v)):
        i, j = cases[ci], raters[ri]
        if not np.isnan(m[i, j]):
            raise StatsInputError(f"duplicate rating for case {ci!r}, rater {ri!r} (row {row})")
        m[i, j] = vi
    miss = np.argwhere(np.isnan(m))
    if miss.size:
        ci = list(cases)[miss[0][0]]
        ri = list(raters)[miss[0][1]]
        raise StatsInputError(
            f"missing rating: case {ci!r} has no value from rater {ri!r} "
            f"({len(miss)} missing in all); ICC needs every rater to rate every case"
        )
    return m, list(cases), list(raters)


def icc2_1(ratings: Any, alpha: float = 0.05) -> ICCResult:
    """ICC(2,1): two-way random effects, absolute agreement, single rater.

    Parameters
    ----------
    ratings : array_like, shape (n_cases, n_raters)
        Complete matrix, one row per case, one column per rater.
    alpha : float, default 0.05
        1 - confidence level of the interval.

    Returns
    -------
    ICCResult

    Raises
    ------
    StatsInputError
        Not a 2-D numeric matrix; NaN/infinite entry (row and column named);
        fewer than 3 cases or fewer than 2 raters; all ratings identical
        (zero total variance, ICC = 0/0); zero residual mean square (the
        F-ratio and its CI are undefined); any other non-finite result.

    Notes
    -----
    With mean squares MSR (cases), MSC (raters), MSE (residual) of the
    two-way ANOVA without replication (Shrout & Fleiss 1979; McGraw & Wong
    1996, ICC(A,1))::

        ICC = (MSR - MSE) / (MSR + (k-1) MSE + k (MSC - MSE) / n)

    The CI uses the Satterthwaite-type degrees of freedom ``v`` of McGraw &
    Wong (1996), exactly as ``pingouin.intraclass_corr`` (row ``ICC2`` /
    ``ICC(A,1)``) and R ``psych::ICC``. A residual mean square below
    1e-12 x the total mean square is treated as zero.
    """
    x = _ratings_matrix(ratings, alpha)
    n, k = x.shape
    msr, msc, mse = _mean_squares(x)
    den = msr + (k - 1) * mse + k * (msc - mse) / n
    icc = (msr - mse) / den
    f_val = msr / mse
    df_r, df_e = n - 1, (n - 1) * (k - 1)
    p_val = float(_st.f.sf(f_val, df_r, df_e))
    lo, hi = _confidence_interval(icc, msr, msc, mse, n, k, alpha)
    out = ICCResult(
        icc=float(icc), ci_low=float(lo), ci_high=float(hi), alpha=float(alpha),
        f=float(f_val), df1=df_r, df2=df_e, p_value=p_val, n_cases=n, n_raters=k,
        ms_rows=float(msr), ms_cols=float(msc), ms_error=float(mse),
    )
    _check_finite(out, "ICC(2,1)")
    return out


def _ratings_matrix(ratings: Any, alpha: float) -> np.ndarray:
    """The ratings as a finite float matrix of at least 3 cases and 2 raters (and a valid alpha)."""
    x = _numeric(ratings, "ratings")
    if x.ndim != 2:
        raise StatsInputError(f"ratings must be a cases x raters matrix, got shape {x.shape}")
    bad = np.argwhere(~np.isfinite(x))
    if bad.size:
        i, j = (int(b) for b in bad[0])
        kind = "NaN" if np.isnan(x[i, j]) else "an infinite value"
        raise StatsInputError(f"ratings contain {kind} at row (case) {i}, column (rater) {j}")
    n, k = x.shape
    if n < 3:
        raise StatsInputError(f"need at least 3 cases, got {n}")
    if k < 2:
        raise StatsInputError(f"need at least 2 raters, got {k}")
    if not 0 < alpha < 1:
        raise StatsInputError(f"alpha must be in (0, 1), got {alpha}")
    return x


def _mean_squares(x: np.ndarray) -> tuple[float, float, float]:
    """(MSR, MSC, MSE) of the two-way ANOVA without replication; refuses zero total or residual variance."""
    n, k = x.shape
    gm = x.mean()
    ss_tot = float(((x - gm) ** 2).sum())
    ss_r = float(k * ((x.mean(axis=1) - gm) ** 2).sum())
    ss_c = float(n * ((x.mean(axis=0) - gm) ** 2).sum())
    ss_e = max(ss_tot - ss_r - ss_c, 0.0)
    df_r, df_c, df_e = n - 1, k - 1, (n - 1) * (k - 1)
    msr, msc, mse = ss_r / df_r, ss_c / df_c, ss_e / df_e
    ms_tot = ss_tot / (n * k - 1)
    if ms_tot == 0.0 or np.ptp(x) == 0:
        raise StatsInputError(
            "zero variance: all ratings are identical, ICC(2,1) is 0/0 (undefined)"
        )
    if mse <= _ZERO_REL * ms_tot:
        raise StatsInputError(
            "zero residual variance: the ratings are exactly additive (case + rater effects), "
            "so F = MSR/MSE and the ICC confidence interval are undefined"
        )
    return msr, msc, mse


def _confidence_interval(icc: float, msr: float, msc: float, mse: float, n: int, k: int,
                         alpha: float) -> tuple[float, float]:
    """McGraw & Wong (1996) case 2A, with their Satterthwaite-type degrees of freedom ``v``."""
    df_r, df_e = n - 1, (n - 1) * (k - 1)
    fj = msc / mse
    vn = df_e * (k * icc * fj + n * (1 + (k - 1) * icc) - k * icc) ** 2
    vd = df_r * k**2 * icc**2 * fj**2 + (n * (1 + (k - 1) * icc) - k * icc) ** 2
    if vd <= 0 or vn <= 0:
        raise StatsInputError(
            "the degrees of freedom of the ICC(2,1) confidence interval are zero "
            f"(ICC = {icc:.4g}); the interval is undefined for these ratings"
        )
    v = vn / vd
    q = 1 - alpha / 2
    f_u = _st.f.ppf(q, df_r, v)
    f_l = _st.f.ppf(q, v, df_r)
    c = k * msc + (k * n - k - n) * mse
    lo = n * (msr - f_u * mse) / (f_u * c + n * msr)
    hi = n * (f_l * msr - mse) / (c + n * f_l * msr)
    return lo, hi


def icc2_1_long(
    case: Sequence[Any], rater: Sequence[Any], value: Sequence[Any], alpha: float = 0.05
) -> ICCResult:
    """ICC(2,1) (an :class:`ICCResult`) from long-form ratings: ``case`` and ``rater`` label each
    ``value``; ``alpha`` is 1 - the confidence level. Raises :class:`StatsInputError` as
    :func:`long_to_wide` and :func:`icc2_1` do.
    """
    m, _, _ = long_to_wide(case, rater, value)
    return icc2_1(m, alpha=alpha)
