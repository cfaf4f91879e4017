"""Tests of coviax_research.stats (ICC, Bland-Altman, ROC) and the ``coviax stats`` CLI.

References used only here: pingouin (ICC), statsmodels (Bland-Altman),
scikit-learn (AUC, ROC curve), and a slow O(m*n) DeLong written below from the
structural-components definition of DeLong et al. (1988).
"""

from __future__ import annotations

import argparse
import json
import math
import re

import numpy as np
import pytest
from scipy import stats as st

from coviax.errors import CoviaxError
from coviax_research.stats import (
    StatsInputError,
    auc_binormal,
    auc_empirical,
    bland_altman,
    delong_auc,
    delong_test,
    icc2_1,
    icc2_1_long,
    long_to_wide,
    youden,
)
from coviax_research.stats_cli import add_stats_parser, main

# Shrout & Fleiss (1979), Table 2: 6 targets (rows) rated by 4 judges (columns).
SF_RATINGS = np.array(
    [
        [9, 2, 5, 8],
        [6, 1, 3, 2],
        [8, 4, 6, 8],
        [7, 1, 2, 6],
        [10, 5, 6, 9],
        [6, 2, 4, 7],
    ],
    dtype=float,
)

# Hanley & McNeil (1982), Table 1: 5-point confidence ratings of 109 CT images
# (58 truly normal, 51 truly abnormal); published area 0.893, SE 0.032.
HM_NEG_COUNTS = [33, 6, 6, 11, 2]
HM_POS_COUNTS = [3, 2, 2, 11, 33]


def _hanley_mcneil():
    neg = np.repeat([1, 2, 3, 4, 5], HM_NEG_COUNTS)
    pos = np.repeat([1, 2, 3, 4, 5], HM_POS_COUNTS)
    truth = np.r_[np.zeros(neg.size, int), np.ones(pos.size, int)]
    return truth, np.r_[neg, pos].astype(float)


# --------------------------------------------------------------------------- #
# references
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def pg():
    pingouin = pytest.importorskip("pingouin")
    old = pingouin.options.get("round.column.CI95", None)
    pingouin.options["round.column.CI95"] = None  # pingouin rounds the CI to 2 decimals by default
    yield pingouin
    pingouin.options["round.column.CI95"] = old


def _pingouin_icc2(pingouin, mat):
    import pandas as pd

    n, k = mat.shape
    df = pd.DataFrame(
        [(i, j, mat[i, j]) for i in range(n) for j in range(k)], columns=["case", "rater", "value"]
    )
    res = pingouin.intraclass_corr(df, targets="case", raters="rater", ratings="value")
    row = res[res["Type"].isin(["ICC2", "ICC(A,1)"])].iloc[0]
    ci = row["CI95%"] if "CI95%" in res.columns else row["CI95"]
    return float(row["ICC"]), float(ci[0]), float(ci[1]), float(row["F"]), float(row["pval"])


def _slow_delong(truth, scores):
    """DeLong et al. (1988) from the definition: psi matrix, V10, V01, S10, S01."""
    truth = np.asarray(truth).astype(bool)
    scores = [np.asarray(s, float) for s in scores]
    m, n = int(truth.sum()), int((~truth).sum())
    v10s, v01s, aucs = [], [], []
    for s in scores:
        x, y = s[truth], s[~truth]
        psi = np.empty((m, n))
        for i in range(m):
            for j in range(n):
                psi[i, j] = 1.0 if x[i] > y[j] else (0.5 if x[i] == y[j] else 0.0)
        aucs.append(psi.sum() / (m * n))
        v10s.append(psi.mean(axis=1))
        v01s.append(psi.mean(axis=0))
    r = len(scores)
    s10 = np.empty((r, r))
    s01 = np.empty((r, r))
    for a in range(r):
        for b in range(r):
            s10[a, b] = ((v10s[a] - aucs[a]) * (v10s[b] - aucs[b])).sum() / (m - 1)
            s01[a, b] = ((v01s[a] - aucs[a]) * (v01s[b] - aucs[b])).sum() / (n - 1)
    return np.array(aucs), s10 / m + s01 / n


def _tied_scores(seed, n=60, shift=0.8):
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.4
    truth[:2] = [True, False]
    truth[2:4] = [True, False]
    latent = rng.normal(size=n) + shift * truth
    s1 = np.round(latent * 2) / 2  # many ties
    s2 = np.round(0.6 * latent + rng.normal(scale=0.8, size=n), 1)
    return truth.astype(int), s1, s2


# --------------------------------------------------------------------------- #
# ICC(2,1)
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("seed,n,k", [(0, 12, 2), (1, 20, 3), (2, 8, 4), (3, 30, 5), (4, 5, 2)])
def test_icc_matches_pingouin_random(pg, seed, n, k):
    rng = np.random.default_rng(seed)
    mat = (
        rng.normal(10, 3, size=(n, 1))  # case effect
        + rng.normal(0, 1.5, size=(1, k))  # rater bias
        + rng.normal(0, 2, size=(n, k))
    )
    r = icc2_1(mat)
    icc, lo, hi, f, p = _pingouin_icc2(pg, mat)
    assert r.icc == pytest.approx(icc, rel=1e-9, abs=1e-12)
    assert r.ci_low == pytest.approx(lo, rel=1e-9, abs=1e-12)
    assert r.ci_high == pytest.approx(hi, rel=1e-9, abs=1e-12)
    assert r.f == pytest.approx(f, rel=1e-9)
    assert r.p_value == pytest.approx(p, rel=1e-7, abs=1e-15)
    assert (r.n_cases, r.n_raters, r.df1, r.df2) == (n, k, n - 1, (n - 1) * (k - 1))
    assert r.ci_low <= r.icc <= r.ci_high


def test_icc_shrout_fleiss_published(pg):
    r = icc2_1(SF_RATINGS)
    # Published values (Shrout & Fleiss 1979: ANOVA mean squares and ICC(2,1) = .29).
    assert round(r.icc, 2) == 0.29
    assert round(r.ms_rows, 2) == 11.24  # BMS
    assert round(r.ms_cols, 2) == 32.49  # JMS
    assert round(r.ms_error, 2) == 1.02  # EMS
    icc, lo, hi, _, _ = _pingouin_icc2(pg, SF_RATINGS)
    assert (r.icc, r.ci_low, r.ci_high) == pytest.approx((icc, lo, hi), rel=1e-9)
    # regression values (same as pingouin above), also used by the CLI test
    assert r.ci_low == pytest.approx(0.0188, abs=5e-5)
    assert r.ci_high == pytest.approx(0.7611, abs=5e-5)


def test_icc_long_form_equals_wide_and_is_order_free():
    rng = np.random.default_rng(7)
    n, k = SF_RATINGS.shape
    rows = [(f"c{i}", f"judge{j}", SF_RATINGS[i, j]) for i in range(n) for j in range(k)]
    perm = rng.permutation(len(rows))
    case, rater, value = zip(*[rows[p] for p in perm])
    wide = icc2_1(SF_RATINGS)
    long = icc2_1_long(case, rater, value)
    assert long.to_dict() == pytest.approx(wide.to_dict())
    mat, cases, raters = long_to_wide(case, rater, value)
    assert sorted(cases) == [f"c{i}" for i in range(n)]
    assert sorted(raters) == [f"judge{j}" for j in range(k)]


def test_icc_to_dict_is_json_ready():
    d = icc2_1(SF_RATINGS).to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d


# --------------------------------------------------------------------------- #
# Bland-Altman
# --------------------------------------------------------------------------- #
def test_bland_altman_hand_computation():
    a = [10, 12, 14, 11, 13]
    b = [9, 12, 12, 12, 11]
    # d = 1, 0, 2, -1, 2 ; mean 0.8 ; sum of squared deviations 6.8 ; var = 6.8/4
    r = bland_altman(a, b)
    sd = math.sqrt(1.7)
    t4 = 2.7764451051977987  # t(0.975, 4)
    assert r.n == 5
    assert r.bias == pytest.approx(0.8)
    assert r.sd == pytest.approx(sd)
    assert r.loa_low == pytest.approx(0.8 - 1.96 * sd)
    assert r.loa_high == pytest.approx(0.8 + 1.96 * sd)
    assert r.critical_difference == pytest.approx(1.96 * sd)
    assert r.critical_difference == pytest.approx((r.loa_high - r.loa_low) / 2)
    assert r.bias_ci_low == pytest.approx(0.8 - t4 * sd / math.sqrt(5))
    assert r.bias_ci_high == pytest.approx(0.8 + t4 * sd / math.sqrt(5))
    se_l = math.sqrt(3 * 1.7 / 5)
    assert r.loa_low_ci == pytest.approx((r.loa_low - t4 * se_l, r.loa_low + t4 * se_l))
    assert r.loa_high_ci == pytest.approx((r.loa_high - t4 * se_l, r.loa_high + t4 * se_l))
    # sign convention: first - second
    assert bland_altman(b, a).bias == pytest.approx(-0.8)


def test_bland_altman_matches_statsmodels_mean_diff_plot():
    pytest.importorskip("statsmodels")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from statsmodels.graphics.agreement import mean_diff_plot

    rng = np.random.default_rng(11)
    a = rng.normal(50, 10, 40)
    b = a + rng.normal(1.5, 3, 40)
    r = bland_altman(a, b)
    fig, ax = plt.subplots()
    try:
        mean_diff_plot(a, b, ax=ax)
        # the three horizontal lines: mean difference, then lower and upper limits
        ys = sorted(float(line.get_ydata()[0]) for line in ax.lines)
    finally:
        plt.close(fig)
    # statsmodels uses np.std(ddof=0); we use ddof=1 (Bland & Altman 1986)
    sd0 = r.sd * math.sqrt((r.n - 1) / r.n)
    assert ys == pytest.approx([r.bias - 1.96 * sd0, r.bias, r.bias + 1.96 * sd0], rel=1e-12)
    d = a - b
    assert r.bias == pytest.approx(np.mean(d))
    assert r.sd == pytest.approx(np.std(d, ddof=1))


# --------------------------------------------------------------------------- #
# ROC: AUC
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_ties(seed):
    from sklearn.metrics import roc_auc_score

    truth, s1, s2 = _tied_scores(seed)
    assert len(np.unique(s1)) < len(s1)  # ties present
    assert auc_empirical(truth, s1) == pytest.approx(roc_auc_score(truth, s1), abs=1e-12)
    assert auc_empirical(truth.astype(bool), s2) == pytest.approx(roc_auc_score(truth, s2), abs=1e-12)


def test_auc_hanley_mcneil_published():
    truth, score = _hanley_mcneil()
    assert round(auc_empirical(truth, score), 3) == 0.893
    # Hanley & McNeil's SE (0.032) comes from their exponential approximation,
    # not DeLong; the two estimators agree to about 0.002 here.
    assert delong_auc(truth, score).se == pytest.approx(0.032, abs=0.002)


def test_auc_higher_means_positive_no_flip():
    truth = [0, 0, 0, 1, 1, 1]
    assert auc_empirical(truth, [1, 2, 3, 4, 5, 6]) == 1.0
    assert auc_empirical(truth, [6, 5, 4, 3, 2, 1]) == 0.0
    assert auc_empirical(truth, [1, 1, 1, 1, 1, 2]) == pytest.approx((0.5 * 6 + 3) / 9)


@pytest.mark.parametrize("seed", range(3))
def test_binormal_matches_independent_ols_on_sklearn_points(seed):
    from sklearn.metrics import roc_curve

    truth, s1, _ = _tied_scores(seed, n=200)
    fpr, tpr, _ = roc_curve(truth, s1, drop_intermediate=False)
    keep = (fpr > 0) & (fpr < 1) & (tpr > 0) & (tpr < 1)
    b, a = np.polyfit(st.norm.ppf(fpr[keep]), st.norm.ppf(tpr[keep]), 1)
    r = auc_binormal(truth, s1)
    assert r.n_points == int(keep.sum())
    assert (r.a, r.b) == pytest.approx((a, b), rel=1e-9)
    assert r.auc == pytest.approx(st.norm.cdf(a / math.sqrt(1 + b * b)), rel=1e-12)
    assert r.method == "ols-probit"


def test_binormal_recovers_true_auc_large_sample():
    rng = np.random.default_rng(3)
    # negatives N(0, 1), positives N(1.25, 1.25): a = 1, b = 0.8
    neg = rng.normal(0, 1, 3000)
    pos = rng.normal(1.25, 1.25, 3000)
    truth = np.r_[np.zeros(3000), np.ones(3000)]
    r = auc_binormal(truth, np.r_[neg, pos])
    true_auc = st.norm.cdf(1 / math.sqrt(1 + 0.64))
    assert r.a == pytest.approx(1.0, abs=0.1)
    assert r.b == pytest.approx(0.8, abs=0.1)
    assert r.auc == pytest.approx(true_auc, abs=0.015)


# --------------------------------------------------------------------------- #
# ROC: DeLong
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("seed", range(4))
def test_delong_single_matches_slow_definition(seed):
    truth, s1, _ = _tied_scores(seed, n=50)
    aucs, cov = _slow_delong(truth, [s1])
    r = delong_auc(truth, s1)
    assert r.auc == pytest.approx(aucs[0], abs=1e-12)
    assert r.variance == pytest.approx(cov[0, 0], rel=1e-10)
    z = st.norm.ppf(0.975)
    assert r.ci_low == pytest.approx(max(0, aucs[0] - z * math.sqrt(cov[0, 0])))
    assert r.ci_high == pytest.approx(min(1, aucs[0] + z * math.sqrt(cov[0, 0])))
    assert (r.n_positive, r.n_negative) == (int(truth.sum()), int((1 - truth).sum()))


@pytest.mark.parametrize("seed", range(4))
def test_delong_paired_matches_slow_definition(seed):
    truth, s1, s2 = _tied_scores(seed, n=50)
    aucs, cov = _slow_delong(truth, [s1, s2])
    r = delong_test(truth, s1, s2)
    assert (r.auc1, r.auc2) == pytest.approx(tuple(aucs), abs=1e-12)
    assert (r.var1, r.var2, r.cov12) == pytest.approx((cov[0, 0], cov[1, 1], cov[0, 1]), rel=1e-10)
    var_d = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    z = (aucs[0] - aucs[1]) / math.sqrt(var_d)
    assert r.diff == pytest.approx(aucs[0] - aucs[1], abs=1e-12)
    assert r.z == pytest.approx(z, rel=1e-9)
    assert r.p_value == pytest.approx(2 * st.norm.sf(abs(z)), rel=1e-9)
    q = st.norm.ppf(0.975) * math.sqrt(var_d)
    assert (r.ci_low, r.ci_high) == pytest.approx((r.diff - q, r.diff + q))
    # antisymmetric under swapping the scores
    s = delong_test(truth, s2, s1)
    assert s.z == pytest.approx(-r.z) and s.p_value == pytest.approx(r.p_value)


def test_delong_invariant_to_monotone_transform():
    truth, s1, s2 = _tied_scores(9, n=80)
    r = delong_test(truth, s1, s2)
    t = delong_test(truth, np.exp(s1), 3 * s2 - 7)
    assert t.to_dict() == pytest.approx(r.to_dict())


def test_delong_perfect_separation_zero_variance_ci():
    r = delong_auc([0, 0, 0, 1, 1, 1], [1, 2, 3, 4, 5, 6])
    assert (r.auc, r.variance, r.ci_low, r.ci_high) == (1.0, 0.0, 1.0, 1.0)


# --------------------------------------------------------------------------- #
# Youden
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("seed", range(5))
def test_youden_matches_sklearn_roc_curve(seed):
    from sklearn.metrics import roc_curve

    truth, s1, s2 = _tied_scores(seed, n=80)
    for s in (s1, s2):
        fpr, tpr, thr = roc_curve(truth, s, drop_intermediate=False)
        i = int(np.argmax(tpr - fpr))
        r = youden(truth, s)
        assert r.threshold == pytest.approx(thr[i])
        assert r.j == pytest.approx(tpr[i] - fpr[i])
        assert r.sensitivity == pytest.approx(tpr[i])
        assert r.specificity == pytest.approx(1 - fpr[i])
        t = truth.astype(bool)
        called = s >= r.threshold
        tp, fp = int((called & t).sum()), int((called & ~t).sum())
        tn, fn = int((~called & ~t).sum()), int((~called & t).sum())
        assert (r.tp, r.fp, r.tn, r.fn) == (tp, fp, tn, fn)
        assert r.ppv == pytest.approx(tp / (tp + fp))
        assert r.npv == pytest.approx(tn / (tn + fn))


def test_youden_small_hand_example():
    # scores: negatives 1,2,3,5 ; positives 4,6,7 (rule score >= t)
    truth = [0, 0, 0, 0, 1, 1, 1]
    score = [1, 2, 3, 5, 4, 6, 7]
    # t=6: Se 2/3, Sp 1 -> J 0.667 ; t=4: Se 1, Sp 3/4 -> J 0.75 (max)
    r = youden(truth, score)
    assert r.threshold == 4
    assert (r.tp, r.fp, r.tn, r.fn) == (3, 1, 3, 0)
    assert r.sensitivity == 1.0
    assert r.specificity == 0.75
    assert r.ppv == 0.75
    assert r.npv == 1.0
    assert r.j == pytest.approx(0.75)


def test_youden_tie_picks_highest_threshold():
    # t=4: Se .5, Sp 1 (J .5) ; t=3: J 0 ; t=2: Se 1, Sp .5 (J .5) -> tie, highest wins
    r = youden([0, 1, 0, 1], [1, 2, 3, 4])
    assert r.threshold == 4 and r.j == 0.5
    assert (r.tp, r.fp, r.tn, r.fn) == (1, 0, 2, 1)


def test_youden_undefined_npv_is_none():
    # every threshold has J <= 0; J = 0 at the lowest threshold only -> all called positive
    r = youden([1, 1, 0, 0], [1, 2, 3, 4])
    assert r.threshold == 1 and r.j == 0
    assert r.npv is None and r.ppv == 0.5


# --------------------------------------------------------------------------- #
# degenerate inputs
# --------------------------------------------------------------------------- #
_GOOD_T = [0, 1, 0, 1, 0, 1]
_GOOD_S = [0.1, 0.9, 0.3, 0.7, 0.5, 0.4]
_NAN_MAT = SF_RATINGS.copy()
_NAN_MAT[1, 2] = np.nan
_ADDITIVE = np.add.outer([1.0, 5.0, 2.0, 8.0], [0.0, 1.5, 3.0])


@pytest.mark.parametrize(
    "call,match",
    [
        # ICC
        (lambda: icc2_1(_NAN_MAT), r"NaN at row \(case\) 1, column \(rater\) 2"),
        (lambda: icc2_1(SF_RATINGS[:2]), "at least 3 cases, got 2"),
        (lambda: icc2_1(SF_RATINGS[:, :1]), "at least 2 raters, got 1"),
        (lambda: icc2_1(np.full((5, 3), 4.2)), "zero variance: all ratings are identical"),
        (lambda: icc2_1(_ADDITIVE), "zero residual variance"),
        (lambda: icc2_1([1, 2, 3]), "cases x raters matrix"),
        (lambda: icc2_1_long([1, 1, 2], ["a", "b", "a"], [1.0, 2.0]), "unequal lengths"),
        (lambda: icc2_1_long([1, 1, 2, 2], ["a", "b", "a", "b"], [1, 2, np.nan, 3]), "NaN at index 2"),
        (lambda: icc2_1_long([1, 1, 2, 2, 3], ["a", "b", "a", "b", "a"], [1, 2, 3, 4, 5]),
         "missing rating: case 3 has no value from rater 'b'"),
        (lambda: icc2_1_long([1, 1, 1], ["a", "a", "b"], [1, 2, 3]),
         "duplicate rating for case 1, rater 'a'"),
        # Bland-Altman
        (lambda: bland_altman([1, 2, 3], [1, 2]), "unequal lengths: first has 3 values, second has 2"),
        (lambda: bland_altman([1, 2, 3], [1, 2, np.nan]), "second contains NaN at index 2"),
        (lambda: bland_altman([1, 2], [1, 3]), "at least 3 cases, got 2"),
        # ROC
        (lambda: auc_empirical([1, 1, 1, 1], [1, 2, 3, 4]), "only one class.*all 4 cases are positive"),
        (lambda: auc_empirical([0, 0, 0], [1, 2, 3]), "only one class.*negative"),
        (lambda: auc_empirical(_GOOD_T, [0.1, np.nan, 0.3, 0.7, 0.5, 0.4]), "score contains NaN at index 1"),
        (lambda: auc_empirical([0, 1, np.nan, 1, 0, 1], _GOOD_S), "truth contains NaN at index 2"),
        (lambda: auc_empirical([0, 1, 2, 1, 0, 1], _GOOD_S), "truth must be 0/1.*index 2"),
        (lambda: auc_empirical(_GOOD_T, _GOOD_S[:5]), "unequal lengths: truth has 6 values, score has 5"),
        (lambda: auc_empirical([0, 1], [0.2, 0.8]), "at least 3 cases, got 2"),
        (lambda: youden([1, 1, 1], [1, 2, 3]), "only one class"),
        (lambda: auc_binormal(_GOOD_T, [0, 1, 0, 1, 1, 0]), "binormal fit needs at least 2 operating points"),
        (lambda: auc_binormal([0, 0, 0, 1, 1, 1], [1, 2, 3, 4, 5, 6]), "perfect separation"),
        (lambda: delong_auc([0, 0, 1], [0.1, 0.2, 0.3]), "at least 2 positives and 2 negatives"),
        (lambda: delong_test(_GOOD_T, _GOOD_S, _GOOD_S), "zero variance of the AUC difference"),
        (lambda: delong_test(_GOOD_T, _GOOD_S, _GOOD_S[:5]), "unequal lengths: score1 has 6 values, score2 has 5"),
        (lambda: delong_test(_GOOD_T, _GOOD_S, [0.1, 0.9, 0.3, 0.7, np.inf, 0.4]),
         "score2 contains an infinite value at index 4"),
    ],
)
def test_degenerate_inputs_raise(call, match):
    with pytest.raises(StatsInputError, match=match) as info:
        call()
    assert isinstance(info.value, ValueError) and isinstance(info.value, CoviaxError)


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #
def _write_long(path, mat, raters=None):
    n, k = mat.shape
    raters = raters or [f"R{j + 1}" for j in range(k)]
    lines = ["case,rater,value"]
    lines += [f"p{i + 1},{raters[j]},{float(mat[i, j])!r}" for i in range(n) for j in range(k)]
    path.write_text("\n".join(lines) + "\n")


def test_cli_agreement_two_raters(tmp_path, capsys):
    mat = SF_RATINGS[:, [0, 3]]
    csv_path = tmp_path / "ratings.csv"
    out = tmp_path / "agreement.json"
    _write_long(csv_path, mat, ["radiologist", "coviax"])
    assert main(["stats", "agreement", str(csv_path), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    icc = icc2_1(mat)
    ba = bland_altman(mat[:, 0], mat[:, 1])
    assert "cases                       6" in text
    assert "2 (radiologist, coviax)" in text
    assert f"{icc.icc:.4f}  (95% CI {icc.ci_low:.4f} to {icc.ci_high:.4f})" in text
    assert "Bland-Altman (radiologist - coviax)" in text
    assert f"{ba.bias:.6g}" in text and f"{ba.loa_low:.6g} to {ba.loa_high:.6g}" in text
    assert f"critical difference       {ba.critical_difference:.6g}" in text
    data = json.loads(out.read_text())
    assert data["n_cases"] == 6 and data["raters"] == ["radiologist", "coviax"]
    assert data["icc2_1"]["icc"] == pytest.approx(icc.icc)
    assert data["bland_altman"]["difference"] == "radiologist - coviax"
    assert data["bland_altman"]["critical_difference"] == pytest.approx(1.96 * ba.sd)
    assert data["bland_altman"]["loa_high"] == pytest.approx(ba.loa_high)


def test_cli_agreement_four_raters_shrout_fleiss(tmp_path, capsys):
    csv_path = tmp_path / "sf.csv"
    _write_long(csv_path, SF_RATINGS)
    assert main(["agreement", str(csv_path)]) == 0  # leading "stats" may be omitted
    text = capsys.readouterr().out
    assert "ICC(2,1)                    0.2898  (95% CI 0.0188 to 0.7611)" in text
    assert "4 (R1, R2, R3, R4)" in text
    assert "Bland-Altman                not computed (4 raters" in text


def test_cli_roc_with_vs(tmp_path, capsys):
    truth, s1, s2 = _tied_scores(5, n=60)
    csv_path = tmp_path / "roc.csv"
    rows = ["id,covid,ai_score,reader"] + [
        f"{i},{'true' if t else 'false'},{float(a)!r},{float(b)!r}" for i, (t, a, b) in enumerate(zip(truth, s1, s2))
    ]
    csv_path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "roc.json"
    rc = main(["stats", "roc", str(csv_path), "--truth", "covid", "--score", "ai_score",
               "--vs", "reader", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    a = delong_auc(truth, s1)
    bino = auc_binormal(truth, s1)
    yd = youden(truth, s1)
    dt = delong_test(truth, s1, s2)
    assert f"AUC (empirical)             {a.auc:.4f}  (95% CI {a.ci_low:.4f} to {a.ci_high:.4f}, DeLong)" in text
    assert f"AUC (binormal)              {bino.auc:.4f}" in text
    assert f"Youden threshold            {yd.threshold:.6g}  (positive if score >= threshold" in text
    assert f"sensitivity                 {yd.sensitivity:.4f}  ({yd.tp}/{yd.tp + yd.fn})" in text
    assert f"specificity                 {yd.specificity:.4f}  ({yd.tn}/{yd.tn + yd.fp})" in text
    assert f"PPV                         {yd.ppv:.4f}" in text
    assert f"NPV                         {yd.npv:.4f}" in text
    assert f"z = {dt.z:.4f}, p = {dt.p_value:.4g}" in text
    data = json.loads(out.read_text())
    assert data["n"] == 60 and data["n_positive"] == int(truth.sum())
    assert data["auc_empirical"] == pytest.approx(a.auc)
    assert data["auc_ci95"] == pytest.approx([a.ci_low, a.ci_high])
    assert data["auc_binormal"] == pytest.approx(bino.auc)
    assert data["youden"]["threshold"] == pytest.approx(yd.threshold)
    assert data["youden"]["rule"] == "positive if score >= threshold"
    assert data["delong_test"]["z"] == pytest.approx(dt.z)
    assert data["delong_test"]["p_value"] == pytest.approx(dt.p_value)


def test_cli_roc_binormal_not_estimable_is_reported(tmp_path, capsys):
    csv_path = tmp_path / "sep.csv"
    csv_path.write_text("y,s\n0,1\n0,2\n0,3\n1,4\n1,5\n1,6\n")
    out = tmp_path / "sep.json"
    assert main(["roc", str(csv_path), "--truth", "y", "--score", "s", "--json", str(out)]) == 0
    assert "AUC (binormal)              not estimable: " in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["auc_binormal"] is None and "perfect separation" in data["binormal_error"]


def test_cli_missing_column_exit_2(tmp_path, capsys):
    csv_path = tmp_path / "roc.csv"
    csv_path.write_text("y,s\n0,1\n1,2\n0,3\n1,4\n")
    rc = main(["stats", "roc", str(csv_path), "--truth", "y", "--score", "ct_severity"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("coviax stats: error: ")
    assert "'ct_severity'" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "content,argv_tail,match",
    [
        (None, ["--truth", "y", "--score", "s"], "file not found"),
        ("y,s\n0,1\n1,oops\n0,3\n", ["--truth", "y", "--score", "s"], "'s' line 3: 'oops' is not a number"),
        ("y,s\n0,1\n1,\n0,3\n", ["--truth", "y", "--score", "s"], "'s' has a missing value at line 3"),
        ("y,s\n0,1\nmaybe,2\n0,3\n", ["--truth", "y", "--score", "s"], "'y' line 3: 'maybe' is not a binary"),
        ("y,s\n1,1\n1,2\n1,3\n", ["--truth", "y", "--score", "s"], "only one class"),
        ("", ["--truth", "y", "--score", "s"], "empty"),
    ],
)
def test_cli_roc_input_errors(tmp_path, capsys, content, argv_tail, match):
    csv_path = tmp_path / "in.csv"
    if content is not None:
        csv_path.write_text(content)
    assert main(["stats", "roc", str(csv_path), *argv_tail]) == 2
    err = capsys.readouterr().err
    assert err.startswith("coviax stats: error: ") and err.count("\n") == 1
    assert re.search(match, err)


def test_cli_agreement_missing_rating_exit_2(tmp_path, capsys):
    csv_path = tmp_path / "r.csv"
    csv_path.write_text("case,rater,value\n1,A,1\n1,B,2\n2,A,3\n2,B,4\n3,A,5\n")
    assert main(["stats", "agreement", str(csv_path)]) == 2
    assert "missing rating: case '3' has no value from rater 'B'" in capsys.readouterr().err


def test_cli_agreement_missing_value_column(tmp_path, capsys):
    csv_path = tmp_path / "r.csv"
    csv_path.write_text("case,reader,value\n1,A,1\n")
    assert main(["stats", "agreement", str(csv_path)]) == 2
    assert "column 'rater' not found" in capsys.readouterr().err


def test_cli_usage_error_exit_2(tmp_path, capsys):
    assert main(["stats", "roc", "x.csv", "--score", "s"]) == 2
    assert "--truth" in capsys.readouterr().err


def test_add_stats_parser_plugs_into_main_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="coviax")
    sub = parser.add_subparsers(dest="command")
    add_stats_parser(sub)
    csv_path = tmp_path / "sf.csv"
    _write_long(csv_path, SF_RATINGS)
    args = parser.parse_args(["stats", "agreement", str(csv_path)])
    assert args.func(args) == 0
    assert "0.2898" in capsys.readouterr().out
