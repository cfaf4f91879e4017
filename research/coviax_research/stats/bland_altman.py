"""Bland-Altman agreement of two raters: bias, limits of agreement, critical difference and their CIs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as _st

from coviax_research.stats._common import StatsInputError, _as_1d_float, _AsDict, _check_finite

#: Multiplier of the SD for the Bland-Altman limits of agreement (thesis: 1.96).
LOA_Z = 1.96


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
