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

from coviax_research.stats._common import StatsInputError
from coviax_research.stats.bland_altman import BlandAltmanResult, bland_altman
from coviax_research.stats.delong import AUCResult, DeLongTest, delong_auc, delong_test
from coviax_research.stats.icc import ICCResult, icc2_1, icc2_1_long, long_to_wide
from coviax_research.stats.roc import BinormalFit, YoudenResult, auc_binormal, auc_empirical, youden

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
