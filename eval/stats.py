"""Statistics that are not evaluate modules: letter distributions, the majority-letter baseline,
and the mean and spread of a metric over seeds.

Accuracy with its bootstrap interval and McNemar's test live in ``eval/metrics`` as evaluate
modules; :func:`load_metric` loads them offline from this checkout.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent / "metrics"


@cache
def load_metric(name: str):
    """Load ``eval/metrics/<name>`` with ``evaluate.load`` (a local path: no network)."""
    import evaluate

    module_type = "comparison" if name == "mcnemar" else "metric"
    return evaluate.load(str(METRICS_DIR / name), module_type=module_type)


def accuracy_ci(predictions: Sequence[str], references: Sequence[str], *, confidence_level: float = 0.95,
                n_resamples: int = 2000, seed: int = 0) -> dict:
    """Accuracy with a seeded bootstrap interval (``mcq_accuracy`` module); empty input gives None."""
    if not references:
        # evaluate cannot build an empty Arrow table; the module's own empty result is the same.
        return {"n": 0, "n_correct": 0, "accuracy": None, "ci_low": None, "ci_high": None,
                "confidence_level": confidence_level, "n_resamples": n_resamples, "seed": seed}
    return load_metric("mcq_accuracy").compute(
        predictions=list(predictions), references=list(references),
        confidence_level=confidence_level, n_resamples=n_resamples, seed=seed)


def mcnemar(predictions1: Sequence[str], predictions2: Sequence[str], references: Sequence[str],
            exact_below: int = 25) -> dict:
    """McNemar's test of two prediction lists on the same questions (``mcnemar`` module)."""
    if not references:
        return {"statistic": 0.0, "p_value": 1.0, "test": "exact-binomial", "b": 0, "c": 0, "n": 0}
    return load_metric("mcnemar").compute(
        predictions1=list(predictions1), predictions2=list(predictions2),
        references=list(references), exact_below=exact_below)


def letter_distribution(letters: Iterable[str], alphabet: str = "ABCDE") -> dict[str, float]:
    """Share of each letter of ``alphabet`` (0.0 for absent letters; all zeros when empty)."""
    counts = Counter(letters)
    total = sum(counts[a] for a in alphabet)
    return {a: (counts[a] / total if total else 0.0) for a in alphabet}


def majority_letter_baseline(answers: Sequence[str], alphabet: str = "ABCDE") -> dict:
    """Accuracy of always answering the most frequent answer letter (ties: earliest letter).

    This is the score a model gets from letter bias alone; the letter is chosen on the same
    answers it is scored on, so it is an upper bound for any constant-letter predictor.
    """
    if not answers:
        return {"letter": None, "accuracy": None, "n": 0}
    counts = Counter(answers)
    letter = max(alphabet, key=lambda a: (counts[a], -alphabet.index(a)))
    return {"letter": letter, "accuracy": counts[letter] / len(answers), "n": len(answers)}


def chance_accuracy(option_counts: Sequence[int]) -> float | None:
    """Expected accuracy of a uniform random guess (mean of 1 / number of options)."""
    if not option_counts:
        return None
    return sum(1.0 / k for k in option_counts) / len(option_counts)


def mean_spread(values: Sequence[float | None]) -> dict:
    """Mean, sample standard deviation, min and max of the non-None values (e.g. over seeds)."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(xs), "max": max(xs), "n": len(xs)}


def seed_bootstrap_difference(correct_a: Sequence[Sequence[bool]], correct_b: Sequence[Sequence[bool]], *,
                              n_resamples: int = 2000, confidence_level: float = 0.95, seed: int = 0) -> dict:
    """Accuracy difference A - B with a bootstrap interval over questions *and* seeds.

    ``correct_x[s][q]``: whether seed ``s`` of method X answered question ``q`` correctly (same
    questions in the same order for both). The point estimate is the difference of seed-averaged
    accuracies. Each resample draws, independently for each method, as many seeds as it has (with
    replacement), averages correctness over the drawn seeds per question, then draws the
    questions (with replacement, the same draw for both methods: paired). A method whose seeds
    disagree therefore gets a wide interval even on many questions; with one seed per method
    this is the paired bootstrap over questions. ``p_value``: two-sided, twice the smaller share
    of resampled differences on either side of 0 (capped at 1).
    """
    import numpy as np

    a = np.asarray(correct_a, dtype=float)
    b = np.asarray(correct_b, dtype=float)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not len(a) or not len(b):
        raise ValueError("correct_a and correct_b must be non-empty [seeds, questions] with the same questions")
    n = a.shape[1]
    out = {"n": n, "n_seeds_a": len(a), "n_seeds_b": len(b), "n_resamples": n_resamples,
           "confidence_level": confidence_level, "seed": seed}
    if n == 0:
        return {**out, "difference": None, "ci_low": None, "ci_high": None, "p_value": None}
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // max(n, 1))  # bounded memory: chunk x n matrices
    for start in range(0, n_resamples, chunk):
        r = min(chunk, n_resamples - start)
        # Seed draws as weights: a seed drawn twice counts twice in the per-question mean.
        wa = rng.multinomial(len(a), np.full(len(a), 1 / len(a)), size=r) / len(a)
        wb = rng.multinomial(len(b), np.full(len(b), 1 / len(b)), size=r) / len(b)
        per_question = wa @ a - wb @ b  # [r, n]
        picks = rng.integers(0, n, size=(r, n))
        diffs[start:start + r] = np.take_along_axis(per_question, picks, axis=1).mean(axis=1)
    alpha = (1 - confidence_level) / 2
    point = float(a.mean() - b.mean())
    p = min(1.0, 2 * min(float((diffs <= 0).mean()), float((diffs >= 0).mean())))
    return {**out, "difference": point, "ci_low": float(np.quantile(diffs, alpha)),
            "ci_high": float(np.quantile(diffs, 1 - alpha)), "p_value": p}


def minimum_detectable_difference(n: int, baseline: float = 0.25, alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Smallest accuracy gain over ``baseline`` that a two-sided two-proportion z-test on ``n``
    questions per method detects with probability ``power`` at level ``alpha`` (None when n = 0).

    Two independent proportions is conservative for two methods scored on the same questions
    (their answers correlate, which a paired test exploits); seeds add no questions, so ``n`` is
    the number of test questions, not questions x seeds."""
    from scipy.stats import norm

    if n <= 0:
        return None
    z_alpha, z_beta = norm.ppf(1 - alpha / 2), norm.ppf(power)

    def reached(d: float) -> float:
        p1 = baseline + d
        pooled = (baseline + p1) / 2
        spread = math.sqrt(baseline * (1 - baseline) + p1 * (1 - p1))
        return (d * math.sqrt(n) - z_alpha * math.sqrt(2 * pooled * (1 - pooled))) / spread - z_beta

    low, high = 0.0, 1.0 - baseline
    if reached(high) < 0:
        return None  # not even a jump to 100 % is detectable at this size
    for _ in range(60):  # bisection: reached() increases with d on (0, 1 - baseline)
        mid = (low + high) / 2
        low, high = (mid, high) if reached(mid) < 0 else (low, mid)
    return high
