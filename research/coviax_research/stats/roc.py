"""ROC: the empirical (Mann-Whitney) and binormal AUC, and the Youden-optimal operating point.
Higher scores mean "positive"; a case is called positive when ``score >= threshold``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as _st

from coviax_research.stats._common import StatsInputError, _AsDict, _check_finite, _roc_inputs


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
    truth, score : array_like
        As :func:`auc_empirical`.

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

    ``truth`` and ``score`` are as in :func:`auc_empirical`, and so are the
    :class:`StatsInputError` raised. Returns a :class:`YoudenResult`.
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
