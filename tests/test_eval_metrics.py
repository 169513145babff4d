"""The evaluate modules (loaded offline from eval/metrics) and eval.stats on fixed toy predictions."""

import math

import pytest

from eval import stats
from eval.stats import load_metric

REFS = list("ABCDABCDAB")
PREDS = list("ABCDDDDDAB")  # 7 of 10 correct: wrong at positions 4, 5, 6


def test_accuracy_module_loads_offline_and_counts():
    out = load_metric("mcq_accuracy").compute(predictions=PREDS, references=REFS)
    assert out["n"] == 10 and out["n_correct"] == 7
    assert out["accuracy"] == pytest.approx(0.7)
    assert 0.0 <= out["ci_low"] <= 0.7 <= out["ci_high"] <= 1.0


def test_accuracy_is_case_and_space_insensitive():
    out = stats.accuracy_ci([" a", "b "], ["A", "C"])
    assert out["accuracy"] == pytest.approx(0.5)


def test_bootstrap_is_seeded_and_matches_normal_approximation():
    refs = ["A"] * 1000
    preds = ["A"] * 700 + ["B"] * 300
    a = stats.accuracy_ci(preds, refs, seed=3)
    b = stats.accuracy_ci(preds, refs, seed=3)
    c = stats.accuracy_ci(preds, refs, seed=4)
    assert (a["ci_low"], a["ci_high"]) == (b["ci_low"], b["ci_high"])
    assert (a["ci_low"], a["ci_high"]) != (c["ci_low"], c["ci_high"])
    se = math.sqrt(0.7 * 0.3 / 1000)  # Wald interval for comparison: 0.7 ± 1.96 se
    assert a["ci_low"] == pytest.approx(0.7 - 1.96 * se, abs=0.006)
    assert a["ci_high"] == pytest.approx(0.7 + 1.96 * se, abs=0.006)


def test_bootstrap_interval_narrows_with_more_questions_and_lower_confidence():
    small = stats.accuracy_ci(PREDS, REFS)
    large = stats.accuracy_ci(PREDS * 20, REFS * 20)
    narrow = stats.accuracy_ci(PREDS * 20, REFS * 20, confidence_level=0.5)
    width = lambda r: r["ci_high"] - r["ci_low"]  # noqa: E731
    assert width(large) < width(small)
    assert width(narrow) < width(large)


def test_all_correct_and_empty():
    full = stats.accuracy_ci(["A", "B"], ["A", "B"])
    assert full["accuracy"] == full["ci_low"] == full["ci_high"] == 1.0
    empty = stats.accuracy_ci([], [])
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["ci_low"] is None


def _paired(b: int, c: int, both: int = 5, neither: int = 3):
    """Predictions of two models with b questions only model 1 gets right and c only model 2."""
    refs, p1, p2 = [], [], []
    for right1, right2, count in ((1, 0, b), (0, 1, c), (1, 1, both), (0, 0, neither)):
        for _ in range(count):
            refs.append("A")
            p1.append("A" if right1 else "B")
            p2.append("A" if right2 else "C")
    return p1, p2, refs


def test_mcnemar_chi_square_with_continuity_correction_by_hand():
    p1, p2, refs = _paired(b=10, c=30)
    out = load_metric("mcnemar").compute(predictions1=p1, predictions2=p2, references=refs)
    assert (out["b"], out["c"], out["n"]) == (10, 30, 48)
    assert out["test"] == "chi2-continuity-corrected"
    assert out["statistic"] == pytest.approx((abs(10 - 30) - 1) ** 2 / 40)  # 9.025
    # Chi-square with 1 dof: P(X > s) = erfc(sqrt(s / 2)).
    assert out["p_value"] == pytest.approx(math.erfc(math.sqrt(9.025 / 2)), rel=1e-9)


def test_mcnemar_exact_binomial_for_few_discordant_by_hand():
    out = stats.mcnemar(*_paired(b=1, c=6))
    assert out["test"] == "exact-binomial"
    assert out["statistic"] == 1.0
    # Two-sided: 2 * P(X <= 1), X ~ Binomial(7, 1/2) = 2 * (1 + 7) / 128.
    assert out["p_value"] == pytest.approx(0.125)


def test_mcnemar_threshold_and_no_discordance():
    assert stats.mcnemar(*_paired(b=12, c=12))["test"] == "exact-binomial"  # 24 < 25
    assert stats.mcnemar(*_paired(b=13, c=12))["test"] == "chi2-continuity-corrected"
    assert stats.mcnemar(*_paired(b=13, c=12), exact_below=30)["test"] == "exact-binomial"
    same = stats.mcnemar(*_paired(b=0, c=0))
    assert same["p_value"] == 1.0 and same["statistic"] == 0.0
    assert stats.mcnemar(*_paired(b=3, c=3))["p_value"] == 1.0  # capped at 1


def test_letter_distribution_and_majority_baseline():
    dist = stats.letter_distribution("AABCD", "ABCDE")
    assert dist == {"A": 0.4, "B": 0.2, "C": 0.2, "D": 0.2, "E": 0.0}
    base = stats.majority_letter_baseline(list("CDDCCB"))
    assert base == {"letter": "C", "accuracy": 0.5, "n": 6}
    assert stats.majority_letter_baseline(list("DC"))["letter"] == "C"  # tie: earliest letter
    assert stats.majority_letter_baseline([])["accuracy"] is None


def test_mean_spread_over_seeds():
    out = stats.mean_spread([0.30, 0.40, None, 0.35])
    assert out["n"] == 3 and out["mean"] == pytest.approx(0.35)
    assert out["std"] == pytest.approx(0.05)  # sample sd of 0.30, 0.35, 0.40
    assert (out["min"], out["max"]) == (0.30, 0.40)
    assert stats.mean_spread([0.3])["std"] == 0.0
    assert stats.mean_spread([])["mean"] is None


def test_chance_accuracy_mixes_option_counts():
    assert stats.chance_accuracy([4, 5]) == pytest.approx((0.25 + 0.2) / 2)
    assert stats.chance_accuracy([]) is None
