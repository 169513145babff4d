"""AUPRC (first: the tasks are imbalanced), AUROC and accuracy (threshold 0.5), with percentile
bootstrap intervals over patients: a resample draws subjects with replacement and keeps all their
samples, and each resample scores every seed's predictions and averages them, so the interval is that
of the seed-mean metric. scikit-learn computes the metrics (the ehr branch has no metrics module yet)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

METRICS = ("auprc", "auroc", "accuracy")


def point_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    if len(set(labels.tolist())) < 2:
        return dict.fromkeys(METRICS, float("nan"))
    return {"auprc": float(average_precision_score(labels, probs)), "auroc": float(roc_auc_score(labels, probs)),
            "accuracy": float(accuracy_score(labels, probs >= 0.5))}


def seed_mean_metrics(labels: np.ndarray, probs_by_seed: list[np.ndarray]) -> dict[str, float]:
    per_seed = [point_metrics(labels, p) for p in probs_by_seed]
    return {m: float(np.mean([s[m] for s in per_seed])) for m in METRICS}


def bootstrap_intervals(labels: np.ndarray, probs_by_seed: list[np.ndarray], subjects: np.ndarray,
                        n_resamples: int = 500, confidence: float = 0.95, seed: int = 0) -> dict[str, dict]:
    """Per metric: the seed-mean point estimate, the seed spread (sd) and the bootstrap interval."""
    rng = np.random.default_rng(seed)
    ids = np.unique(subjects)
    rows_of = {s: np.flatnonzero(subjects == s) for s in ids}
    draws = {m: [] for m in METRICS}
    for _ in range(n_resamples):
        idx = np.concatenate([rows_of[s] for s in rng.choice(ids, len(ids), replace=True)])
        scores = seed_mean_metrics(labels[idx], [p[idx] for p in probs_by_seed])
        for m in METRICS:
            if np.isfinite(scores[m]):
                draws[m].append(scores[m])
    point = seed_mean_metrics(labels, probs_by_seed)
    spread = [point_metrics(labels, p) for p in probs_by_seed]
    alpha = (1 - confidence) / 2
    out = {}
    for m in METRICS:
        low, high = (np.quantile(draws[m], [alpha, 1 - alpha]) if draws[m] else (np.nan, np.nan))
        out[m] = {"mean": point[m], "seed_sd": float(np.std([s[m] for s in spread])), "low": float(low),
                  "high": float(high)}
    return out


def paired_difference(labels: np.ndarray, probs_a: list[np.ndarray], probs_b: list[np.ndarray],
                      subjects: np.ndarray, metric: str = "auprc", n_resamples: int = 500,
                      confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Seed-mean ``metric`` of A minus B, with a percentile interval from the same patient resamples
    for both (paired: the interval of the difference, not two intervals side by side)."""
    rng = np.random.default_rng(seed)
    ids = np.unique(subjects)
    rows_of = {s: np.flatnonzero(subjects == s) for s in ids}

    def diff(idx):
        a = seed_mean_metrics(labels[idx], [p[idx] for p in probs_a])[metric]
        b = seed_mean_metrics(labels[idx], [p[idx] for p in probs_b])[metric]
        return a - b

    draws = [d for d in (diff(np.concatenate([rows_of[s] for s in rng.choice(ids, len(ids), replace=True)]))
                         for _ in range(n_resamples)) if np.isfinite(d)]
    alpha = (1 - confidence) / 2
    low, high = np.quantile(draws, [alpha, 1 - alpha]) if draws else (np.nan, np.nan)
    return {"difference": float(diff(np.arange(len(labels)))), "low": float(low), "high": float(high)}
