"""McNemar's test of two classifiers on the same questions.

Loadable offline: ``evaluate.load("eval/metrics/mcnemar", module_type="comparison")``.
"""

from __future__ import annotations

import datasets
import evaluate
from scipy import stats

_DESCRIPTION = """\
McNemar's test for paired predictions. Only discordant questions count: b = questions model 1
answers correctly and model 2 does not, c = the reverse. With few discordant questions
(b + c < exact_below, default 25) the exact two-sided binomial test is used
(statistic = min(b, c), p = P(X <= min(b, c)) * 2 under Binomial(b + c, 1/2), capped at 1);
otherwise the chi-square approximation with continuity correction
(statistic = (|b - c| - 1)^2 / (b + c), 1 degree of freedom). The result says which test ran.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions1 (list of str): letters predicted by model 1.
    predictions2 (list of str): letters predicted by model 2 on the same questions, same order.
    references (list of str): answer letters.
    exact_below (int): use the exact binomial test when b + c is below this, default 25.
Returns:
    statistic (float), p_value (float), test ("exact-binomial" or "chi2-continuity-corrected"),
    b (int: only model 1 right), c (int: only model 2 right), n (int)
Examples:
    >>> m = evaluate.load("eval/metrics/mcnemar", module_type="comparison")
    >>> m.compute(predictions1=["A", "B"], predictions2=["A", "C"], references=["A", "B"])["b"]
    1
"""

EXACT = "exact-binomial"
CHI2 = "chi2-continuity-corrected"


def mcnemar_from_counts(b: int, c: int, exact_below: int = 25) -> tuple[float, float, str]:
    """(statistic, two-sided p-value, test name) from the discordant counts b and c."""
    n_disc = b + c
    if n_disc < exact_below:
        if n_disc == 0:
            return 0.0, 1.0, EXACT
        k = min(b, c)
        p = min(1.0, 2.0 * float(stats.binom.cdf(k, n_disc, 0.5)))
        return float(k), p, EXACT
    statistic = (abs(b - c) - 1.0) ** 2 / n_disc
    return float(statistic), float(stats.chi2.sf(statistic, df=1)), CHI2


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class McNemar(evaluate.Comparison):
    def _info(self):
        return evaluate.ComparisonInfo(
            module_type="comparison",
            description=_DESCRIPTION,
            citation="McNemar, Q. (1947). Psychometrika 12(2):153-157.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions1": datasets.Value("string"),
                "predictions2": datasets.Value("string"),
                "references": datasets.Value("string"),
            }),
        )

    def _compute(self, predictions1, predictions2, references, exact_below: int = 25):
        b = c = 0
        for p1, p2, ref in zip(predictions1, predictions2, references, strict=True):
            right1, right2 = p1 == ref, p2 == ref
            b += right1 and not right2
            c += right2 and not right1
        statistic, p_value, test = mcnemar_from_counts(b, c, exact_below)
        return {"statistic": statistic, "p_value": p_value, "test": test, "b": b, "c": c,
                "n": len(references)}
