"""Multiple-choice accuracy with a seeded 95% percentile-bootstrap confidence interval.

Loadable offline: ``evaluate.load("eval/metrics/mcq_accuracy")``.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """\
Accuracy of predicted option letters against the answer letters, with a percentile-bootstrap
confidence interval (questions resampled with replacement). The resampling is seeded, so the
interval is reproducible. With no questions, accuracy and the interval are None.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): predicted option letters, e.g. ["A", "C"].
    references (list of str): answer letters, same length.
    confidence_level (float): coverage of the interval, default 0.95.
    n_resamples (int): bootstrap resamples, default 2000.
    seed (int): seed of the resampling, default 0.
Returns:
    accuracy (float | None), ci_low, ci_high (float | None), n (int), n_correct (int),
    confidence_level (float), n_resamples (int), seed (int)
Examples:
    >>> metric = evaluate.load("eval/metrics/mcq_accuracy")
    >>> metric.compute(predictions=["A", "B"], references=["A", "C"])["accuracy"]
    0.5
"""


def bootstrap_interval(correct: np.ndarray, confidence_level: float, n_resamples: int,
                       seed: int) -> tuple[float, float]:
    """Percentile bootstrap of the mean of a 0/1 vector; vectorised (one matrix of counts)."""
    rng = np.random.default_rng(seed)
    n = correct.size
    # Each resample's number of correct answers: drawing indices n times with replacement is
    # equivalent to a multinomial over questions; sampling indices keeps it simple and exact.
    idx = rng.integers(0, n, size=(n_resamples, n))
    means = correct[idx].mean(axis=1)
    alpha = (1.0 - confidence_level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MCQAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Value("string"),
                "references": datasets.Value("string"),
            }),
        )

    def _compute(self, predictions, references, confidence_level: float = 0.95,
                 n_resamples: int = 2000, seed: int = 0):
        if not 0.0 < confidence_level < 1.0:
            raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level}")
        if n_resamples < 1:
            raise ValueError(f"n_resamples must be positive, got {n_resamples}")
        correct = np.array([str(p).strip().upper() == str(r).strip().upper()
                            for p, r in zip(predictions, references, strict=True)], dtype=float)
        out = {"n": int(correct.size), "n_correct": int(correct.sum()),
               "confidence_level": confidence_level, "n_resamples": n_resamples, "seed": seed}
        if correct.size == 0:
            return {**out, "accuracy": None, "ci_low": None, "ci_high": None}
        low, high = bootstrap_interval(correct, confidence_level, n_resamples, seed)
        return {**out, "accuracy": float(correct.mean()), "ci_low": low, "ci_high": high}
