"""Study statistics of the COViaX thesis: rater agreement and ROC analysis.

Pure numpy/scipy; no pandas at runtime. Every function validates its input and
raises :class:`StatsInputError` (a :class:`ValueError`) with a message naming
the problem instead of returning NaN.

Agreement
    * :func:`icc2_1` / :func:`icc2_1_long` -- ICC(2,1), two-way random effects,
      absolute agreement, single measure (Shrout & Fleiss 1979 "ICC(2,1)",
      McGraw & Wong 1996 "ICC(A,1)") with the F-based 95 % CI of McGraw & Wong
      (the ``ICC2`` / ``ICC(A,1)`` row of ``pingouin.intraclass_corr``).
    * :func:`bland_altman` -- bias, SD of the differences, limits of agreement,
      critical difference, CI of the bias and of the limits (Bland & Altman 1986).

ROC
    * Convention everywhere: **higher scores mean "positive"**, and a case is
      called positive when ``score >= threshold``. Nothing is flipped
      automatically (unlike pROC's ``direction="auto"``): a score that is
      higher in negatives gives an AUC below 0.5.
    * :func:`auc_empirical` -- Mann-Whitney AUC, ties count 1/2.
    * :func:`auc_binormal` -- binormal-smoothed AUC from an ordinary
      least-squares fit of probit(TPR) on probit(FPR) over the empirical
      operating points (not maximum likelihood).
    * :func:`delong_auc` / :func:`delong_test` -- DeLong, DeLong &
      Clarke-Pearson (1988) variance of one AUC and test of two paired AUCs,
      computed with the midrank algorithm of Sun & Xu (2014).
    * :func:`youden` -- threshold maximising Se + Sp - 1 with Se, Sp, PPV, NPV
      and the 2x2 counts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from scipy import stats as _st

from coviax.errors import CoviaxError

__all__ = [
    "StatsInputError",
    "ICCResult",
    "BlandAltmanResult",
    "BinormalFit",
    "AUCResult",
    "DeLongTest",
    "YoudenResult",
    "long_to_wide",
    "icc2_1",
    "icc2_1_long",
    "bland_altman",
    "auc_empirical",
    "auc_binormal",
    "delong_auc",
    "delong_test",
    "youden",
]

#: Multiplier of the SD for the Bland-Altman limits of agreement (thesis: 1.96).
LOA_Z = 1.96

# A mean square at or below this fraction of the total mean square is treated
# as exactly zero (rounding noise of perfectly additive data).
_ZERO_REL = 1e-12


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


# --------------------------------------------------------------------------- #
# validation helpers
# --------------------------------------------------------------------------- #
def _as_1d_float(x: Any, name: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as exc:
        raise StatsInputError(f"{name} must be numeric: {exc}") from None
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


# --------------------------------------------------------------------------- #
# ICC(2,1)
# --------------------------------------------------------------------------- #
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
    try:
        x = np.asarray(ratings, dtype=float)
    except (TypeError, ValueError) as exc:
        raise StatsInputError(f"ratings must be numeric: {exc}") from None
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

    den = msr + (k - 1) * mse + k * (msc - mse) / n
    icc = (msr - mse) / den
    f_val = msr / mse
    p_val = float(_st.f.sf(f_val, df_r, df_e))

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

    out = ICCResult(
        icc=float(icc), ci_low=float(lo), ci_high=float(hi), alpha=float(alpha),
        f=float(f_val), df1=df_r, df2=df_e, p_value=p_val, n_cases=n, n_raters=k,
        ms_rows=float(msr), ms_cols=float(msc), ms_error=float(mse),
    )
    _check_finite(out, "ICC(2,1)")
    return out


def icc2_1_long(
    case: Sequence[Any], rater: Sequence[Any], value: Sequence[Any], alpha: float = 0.05
) -> ICCResult:
    """ICC(2,1) from long-form (case, rater, value) arrays.

    Parameters
    ----------
    case, rater : sequence
        Labels of each rating.
    value : sequence of float
        The ratings.
    alpha : float, default 0.05
        1 - confidence level.

    Returns
    -------
    ICCResult

    Raises
    ------
    StatsInputError
        As :func:`long_to_wide` and :func:`icc2_1`.
    """
    m, _, _ = long_to_wide(case, rater, value)
    return icc2_1(m, alpha=alpha)


def _check_finite(res: Any, what: str) -> None:
    for k, v in asdict(res).items():
        if isinstance(v, float) and not np.isfinite(v):
            raise StatsInputError(f"{what}: {k} is not finite for this input (degenerate data)")


# --------------------------------------------------------------------------- #
# Bland-Altman
# --------------------------------------------------------------------------- #
@dataclass(frozen=True)
class BlandAltmanResult(_AsDict):
    """Bland-Altman agreement of two raters (differences = first - second).

    Attributes
    ----------
    n : int
        Number of paired measurements.
    bias : float
        Mean difference.
    sd : float
        SD of the differences (ddof = 1).
    loa_low, loa_high : float
        Limits of agreement, ``bias -/+ 1.96 sd``.
    critical_difference : float
        Half the width of the limits, ``1.96 sd`` (repeatability coefficient).
    bias_ci_low, bias_ci_high : float
        ``1 - alpha`` CI of the bias, ``bias -/+ t(1-alpha/2, n-1) sd / sqrt(n)``.
    loa_low_ci, loa_high_ci : tuple of float
        Approximate CIs of each limit, ``limit -/+ t sqrt(3 sd^2 / n)``
        (Bland & Altman 1986).
    alpha : float
        1 - confidence level of the CIs.
    """

    n: int
    bias: float
    sd: float
    loa_low: float
    loa_high: float
    critical_difference: float
    bias_ci_low: float
    bias_ci_high: float
    loa_low_ci: tuple[float, float]
    loa_high_ci: tuple[float, float]
    alpha: float


def bland_altman(first: Any, second: Any, alpha: float = 0.05) -> BlandAltmanResult:
    """Bland-Altman bias, limits of agreement and critical difference.

    Parameters
    ----------
    first, second : array_like, shape (n,)
        Paired measurements of the same cases by two raters; the differences
        are ``first - second``.
    alpha : float, default 0.05
        1 - confidence level of the CIs (the limits always use 1.96 SD).

    Returns
    -------
    BlandAltmanResult

    Raises
    ------
    StatsInputError
        Unequal lengths, NaN/infinite value (array and index named), fewer
        than 3 pairs.
    """
    a = _as_1d_float(first, "first")
    b = _as_1d_float(second, "second")
    if a.size != b.size:
        raise StatsInputError(f"unequal lengths: first has {a.size} values, second has {b.size}")
    n = a.size
    if n < 3:
        raise StatsInputError(f"need at least 3 cases, got {n}")
    if not 0 < alpha < 1:
        raise StatsInputError(f"alpha must be in (0, 1), got {alpha}")
    d = a - b
    bias = float(d.mean())
    sd = float(d.std(ddof=1))
    cd = LOA_Z * sd
    t = float(_st.t.ppf(1 - alpha / 2, n - 1))
    se_b = sd / np.sqrt(n)
    se_l = np.sqrt(3 * sd**2 / n)
    lo, hi = bias - cd, bias + cd
    out = BlandAltmanResult(
        n=n, bias=bias, sd=sd, loa_low=lo, loa_high=hi, critical_difference=cd,
        bias_ci_low=bias - t * se_b, bias_ci_high=bias + t * se_b,
        loa_low_ci=(float(lo - t * se_l), float(lo + t * se_l)),
        loa_high_ci=(float(hi - t * se_l), float(hi + t * se_l)),
        alpha=float(alpha),
    )
    _check_finite(out, "Bland-Altman")
    return out


# --------------------------------------------------------------------------- #
# ROC
# --------------------------------------------------------------------------- #
def _placements(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong structural components via midranks (Sun & Xu 2014).

    ``v10[i]`` = mean over negatives of psi(pos_i, neg_j) and ``v01[j]`` =
    mean over positives of psi(pos_i, neg_j), psi = 1 (>), 1/2 (=), 0 (<).
    """
    m, n = pos.size, neg.size
    z = _st.rankdata(np.concatenate([pos, neg]))
    rx = _st.rankdata(pos)
    ry = _st.rankdata(neg)
    v10 = (z[:m] - rx) / n
    v01 = 1.0 - (z[m:] - ry) / m
    return v10, v01


def auc_empirical(truth: Any, score: Any) -> float:
    """Empirical (Mann-Whitney) area under the ROC curve.

    Parameters
    ----------
    truth : array_like of bool or {0, 1}, shape (n,)
        1/True = positive.
    score : array_like of float, shape (n,)
        Higher = more likely positive.

    Returns
    -------
    float
        P(score_pos > score_neg) + 1/2 P(score_pos = score_neg).

    Raises
    ------
    StatsInputError
        Unequal lengths, NaN in truth or score (index named), truth not 0/1,
        fewer than 3 cases, only one class in the truth.
    """
    t, pos, neg = _roc_inputs(truth, score)
    v10, _ = _placements(pos, neg)
    return float(v10.mean())


@dataclass(frozen=True)
class BinormalFit(_AsDict):
    """Binormal ROC model fitted by least squares on the probit scale.

    Attributes
    ----------
    a, b : float
        Intercept and slope of ``probit(TPR) = a + b probit(FPR)``
        (a = (mu_pos - mu_neg)/sd_pos, b = sd_neg/sd_pos).
    auc : float
        ``Phi(a / sqrt(1 + b^2))``.
    n_points : int
        Number of empirical operating points used (both FPR and TPR strictly
        between 0 and 1).
    method : str
        Always ``"ols-probit"``.
    """

    a: float
    b: float
    auc: float
    n_points: int
    method: str = "ols-probit"


def _operating_points(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, FPR, TPR) for every distinct score, decreasing threshold, rule score >= t."""
    thr = np.unique(np.concatenate([pos, neg]))[::-1]
    pos_s, neg_s = np.sort(pos), np.sort(neg)
    tp = pos.size - np.searchsorted(pos_s, thr, side="left")
    fp = neg.size - np.searchsorted(neg_s, thr, side="left")
    return thr, fp / neg.size, tp / pos.size


def auc_binormal(truth: Any, score: Any) -> BinormalFit:
    """Binormal-smoothed AUC.

    The empirical operating points (one per distinct score, rule
    ``score >= threshold``) whose FPR and TPR are both strictly inside (0, 1)
    are transformed with the probit (inverse standard-normal CDF) and
    ``probit(TPR) = a + b probit(FPR)`` is fitted by **ordinary least
    squares** (the classical graphical/regression estimate, not the
    Dorfman-Alf maximum-likelihood fit). AUC = Phi(a / sqrt(1 + b^2)).

    Parameters
    ----------
    truth : array_like of bool or {0, 1}
        1/True = positive.
    score : array_like of float
        Higher = more likely positive.

    Returns
    -------
    BinormalFit

    Raises
    ------
    StatsInputError
        As :func:`auc_empirical`; also when fewer than 2 usable operating
        points with distinct FPR exist (e.g. a binary score, or perfect
        separation, where every point has FPR = 0 or TPR = 1).
    """
    t, pos, neg = _roc_inputs(truth, score)
    _, fpr, tpr = _operating_points(pos, neg)
    keep = (fpr > 0) & (fpr < 1) & (tpr > 0) & (tpr < 1)
    x = _st.norm.ppf(fpr[keep])
    y = _st.norm.ppf(tpr[keep])
    if x.size < 2 or np.ptp(x) == 0:
        raise StatsInputError(
            f"binormal fit needs at least 2 operating points with distinct FPR strictly "
            f"between 0 and 1 and TPR strictly between 0 and 1, found {x.size} "
            "(too few distinct scores, or perfect separation)"
        )
    xm, ym = x.mean(), y.mean()
    b = float(((x - xm) * (y - ym)).sum() / ((x - xm) ** 2).sum())
    a = float(ym - b * xm)
    auc = float(_st.norm.cdf(a / np.sqrt(1 + b**2)))
    out = BinormalFit(a=a, b=b, auc=auc, n_points=int(x.size))
    _check_finite(out, "binormal AUC")
    return out


@dataclass(frozen=True)
class AUCResult(_AsDict):
    """Empirical AUC with its DeLong variance and Wald CI.

    Attributes
    ----------
    auc : float
        Empirical AUC (ties 1/2).
    variance, se : float
        DeLong variance ``S10/m + S01/n`` and its square root.
    ci_low, ci_high : float
        ``auc -/+ z(1-alpha/2) se``, clipped to [0, 1].
    alpha : float
        1 - confidence level.
    n_positive, n_negative : int
        Class sizes.
    """

    auc: float
    variance: float
    se: float
    ci_low: float
    ci_high: float
    alpha: float
    n_positive: int
    n_negative: int


def _need_two_each(pos: np.ndarray, neg: np.ndarray) -> None:
    if pos.size < 2 or neg.size < 2:
        raise StatsInputError(
            f"DeLong variance needs at least 2 positives and 2 negatives, "
            f"got {pos.size} positive and {neg.size} negative"
        )


def delong_auc(truth: Any, score: Any, alpha: float = 0.05) -> AUCResult:
    """AUC with the DeLong (1988) variance and a Wald confidence interval.

    Parameters
    ----------
    truth : array_like of bool or {0, 1}
        1/True = positive.
    score : array_like of float
        Higher = more likely positive.
    alpha : float, default 0.05
        1 - confidence level.

    Returns
    -------
    AUCResult

    Raises
    ------
    StatsInputError
        As :func:`auc_empirical`; fewer than 2 positives or 2 negatives.

    Notes
    -----
    Structural components V10 (per positive) and V01 (per negative) are the
    midrank placements of Sun & Xu (2014); ``var = var(V10)/m + var(V01)/n``
    with ddof = 1, as pROC's ``var(method="delong")``. A perfectly separating
    score has variance 0 and CI [AUC, AUC].
    """
    if not 0 < alpha < 1:
        raise StatsInputError(f"alpha must be in (0, 1), got {alpha}")
    _, pos, neg = _roc_inputs(truth, score)
    _need_two_each(pos, neg)
    v10, v01 = _placements(pos, neg)
    auc = float(v10.mean())
    var = float(v10.var(ddof=1) / pos.size + v01.var(ddof=1) / neg.size)
    se = float(np.sqrt(var))
    z = float(_st.norm.ppf(1 - alpha / 2))
    out = AUCResult(
        auc=auc, variance=var, se=se,
        ci_low=float(max(0.0, auc - z * se)), ci_high=float(min(1.0, auc + z * se)),
        alpha=float(alpha), n_positive=int(pos.size), n_negative=int(neg.size),
    )
    _check_finite(out, "DeLong AUC")
    return out


@dataclass(frozen=True)
class DeLongTest(_AsDict):
    """DeLong test of two correlated (paired) AUCs, H0: AUC1 = AUC2.

    Attributes
    ----------
    auc1, auc2 : float
        Empirical AUCs of the two scores.
    var1, var2, cov12 : float
        DeLong variances and covariance.
    diff : float
        ``auc1 - auc2``.
    se_diff : float
        ``sqrt(var1 + var2 - 2 cov12)``.
    z : float
        ``diff / se_diff``.
    p_value : float
        Two-sided normal p-value.
    ci_low, ci_high : float
        ``diff -/+ z(1-alpha/2) se_diff`` (not clipped).
    alpha : float
        1 - confidence level.
    n_positive, n_negative : int
        Class sizes.
    """

    auc1: float
    auc2: float
    var1: float
    var2: float
    cov12: float
    diff: float
    se_diff: float
    z: float
    p_value: float
    ci_low: float
    ci_high: float
    alpha: float
    n_positive: int
    n_negative: int


def delong_test(truth: Any, score1: Any, score2: Any, alpha: float = 0.05) -> DeLongTest:
    """DeLong, DeLong & Clarke-Pearson (1988) test for two paired AUCs.

    Parameters
    ----------
    truth : array_like of bool or {0, 1}, shape (n,)
        1/True = positive.
    score1, score2 : array_like of float, shape (n,)
        Two scores of the same cases; higher = more likely positive.
    alpha : float, default 0.05
        1 - confidence level of the CI of the difference.

    Returns
    -------
    DeLongTest

    Raises
    ------
    StatsInputError
        As :func:`delong_auc` for either score; unequal lengths; zero
        variance of the difference (e.g. identical scores, or both scores
        separate the classes perfectly), where z = diff / 0 is undefined.
    """
    if not 0 < alpha < 1:
        raise StatsInputError(f"alpha must be in (0, 1), got {alpha}")
    s1 = _as_1d_float(score1, "score1")
    s2 = _as_1d_float(score2, "score2")
    if s1.size != s2.size:
        raise StatsInputError(f"unequal lengths: score1 has {s1.size} values, score2 has {s2.size}")
    t, p1, n1 = _roc_inputs(truth, s1, "score1")
    _need_two_each(p1, n1)
    p2, n2 = s2[t], s2[~t]
    m, n = p1.size, n1.size
    a10, a01 = _placements(p1, n1)
    b10, b01 = _placements(p2, n2)
    s10 = np.cov(np.vstack([a10, b10]), ddof=1)
    s01 = np.cov(np.vstack([a01, b01]), ddof=1)
    cov = s10 / m + s01 / n
    auc1, auc2 = float(a10.mean()), float(b10.mean())
    var_d = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    scale = max(float(cov[0, 0] + cov[1, 1]), 0.0)
    if var_d <= 1e-12 * scale or var_d <= 0.0:
        raise StatsInputError(
            "zero variance of the AUC difference (identical scores, or both scores "
            f"rank the cases identically; AUC1 = {auc1:.4f}, AUC2 = {auc2:.4f}): "
            "the DeLong z = diff / SE is undefined"
        )
    se = float(np.sqrt(var_d))
    diff = auc1 - auc2
    zval = diff / se
    zq = float(_st.norm.ppf(1 - alpha / 2))
    out = DeLongTest(
        auc1=auc1, auc2=auc2, var1=float(cov[0, 0]), var2=float(cov[1, 1]),
        cov12=float(cov[0, 1]), diff=diff, se_diff=se, z=float(zval),
        p_value=float(2 * _st.norm.sf(abs(zval))),
        ci_low=diff - zq * se, ci_high=diff + zq * se, alpha=float(alpha),
        n_positive=m, n_negative=n,
    )
    _check_finite(out, "DeLong test")
    return out


@dataclass(frozen=True)
class YoudenResult(_AsDict):
    """Operating point that maximises Youden's J = Se + Sp - 1.

    Decision rule: positive if ``score >= threshold``.

    Attributes
    ----------
    threshold : float
        An observed score value.
    j : float
        Se + Sp - 1 at the threshold.
    sensitivity, specificity : float
        TP/(TP+FN), TN/(TN+FP).
    ppv, npv : float or None
        TP/(TP+FP), TN/(TN+FN) at the study prevalence; ``None`` when the
        denominator is zero (no case called positive / negative).
    tp, fp, tn, fn : int
        2x2 counts at the threshold.
    """

    threshold: float
    j: float
    sensitivity: float
    specificity: float
    ppv: float | None
    npv: float | None
    tp: int
    fp: int
    tn: int
    fn: int


def youden(truth: Any, score: Any) -> YoudenResult:
    """Youden-optimal threshold with Se, Sp, PPV, NPV and counts.

    Candidate thresholds are the distinct observed scores; a case is called
    positive when ``score >= threshold`` (higher = positive). When several
    thresholds reach the same maximal J, the **highest** is returned (same as
    ``argmax(tpr - fpr)`` over ``sklearn.metrics.roc_curve`` points, which
    are ordered by decreasing threshold).

    Parameters
    ----------
    truth : array_like of bool or {0, 1}
        1/True = positive.
    score : array_like of float
        Higher = more likely positive.

    Returns
    -------
    YoudenResult

    Raises
    ------
    StatsInputError
        As :func:`auc_empirical`.
    """
    t, pos, neg = _roc_inputs(truth, score)
    thr, fpr, tpr = _operating_points(pos, neg)
    jj = tpr - fpr
    i = int(np.argmax(jj))  # first = highest threshold among ties
    th = float(thr[i])
    tp = int((pos >= th).sum())
    fn = int(pos.size - tp)
    fp = int((neg >= th).sum())
    tn = int(neg.size - fp)
    return YoudenResult(
        threshold=th,
        j=float(tp / pos.size + tn / neg.size - 1),
        sensitivity=tp / pos.size,
        specificity=tn / neg.size,
        ppv=tp / (tp + fp) if tp + fp else None,
        npv=tn / (tn + fn) if tn + fn else None,
        tp=tp, fp=fp, tn=tn, fn=fn,
    )
