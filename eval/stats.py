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
