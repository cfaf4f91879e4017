"""DeLong, DeLong & Clarke-Pearson (1988): the variance of one AUC and the test of two paired AUCs,
with the midrank placements of Sun & Xu (2014)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as _st

from coviax_research.stats._common import StatsInputError, _as_1d_float, _AsDict, _check_finite, _roc_inputs
from coviax_research.stats.roc import _placements


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
    truth, score : array_like
        As :func:`auc_empirical`.
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
