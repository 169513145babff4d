"""Per-task metrics with bootstrap intervals over patients, and the rare/unseen-code slice.

AUROC, AUPRC (average precision; the primary metric under imbalance) and F1. F1 needs a threshold:
the one maximising F1 on the tuning split when that split has both classes, else 0.5 (the report
says which). Intervals: the 2.5/97.5 percentiles over ``n_boot`` resamples of *patients* (all of a
patient's samples go together, so a patient with many visits does not narrow the interval).
A task whose evaluated samples hold fewer than ``min_positives`` positives (or negatives) is not
estimable: no number is printed for it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, f1_score, precision_recall_curve, roc_auc_score


def best_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float | None:
    if len(set(labels.tolist())) < 2:
        return None
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def point_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    return {"auroc": float(roc_auc_score(labels, scores)), "auprc": float(average_precision_score(labels, scores)),
            "f1": float(f1_score(labels, scores >= threshold, zero_division=0))}


def estimable(labels: np.ndarray, min_positives: int) -> bool:
    positives = int(labels.sum())
    return positives >= min_positives and len(labels) - positives >= min_positives


def bootstrap(frame: pd.DataFrame, threshold: float, n_boot: int, seed: int) -> dict[str, list[float]]:
    """95% intervals of each metric over resampled patients (``frame``: subject_id, label, score)."""
    groups = {sid: idx for sid, idx in frame.groupby("subject_id").indices.items()}
    ids = np.array(list(groups))
    rng = np.random.default_rng(seed)
    labels, scores = frame["label"].to_numpy(), frame["score"].to_numpy()
    draws: dict[str, list[float]] = {"auroc": [], "auprc": [], "f1": []}
    for _ in range(n_boot):
        idx = np.concatenate([groups[s] for s in rng.choice(ids, len(ids), replace=True)])
        if len(set(labels[idx].tolist())) < 2:
            continue  # a resample with one class has no AUROC: skipped, as is usual
        for k, v in point_metrics(labels[idx], scores[idx], threshold).items():
            draws[k].append(v)
    return {k: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))] if v else [float("nan")] * 2
            for k, v in draws.items()}


def task_metrics(test: pd.DataFrame, tuning: pd.DataFrame, min_positives: int, n_boot: int, seed: int) -> dict:
    """Metrics of one task (frames with subject_id, label, score), or why there are none."""
    labels = test["label"].to_numpy()
    out = {"samples": len(test), "positives": int(labels.sum())}
    if not estimable(labels, min_positives):
        return {**out, "estimable": False,
                "why_not": f"fewer than {min_positives} positives or negatives among the evaluated samples"}
    threshold = best_f1_threshold(tuning["label"].to_numpy(), tuning["score"].to_numpy()) if len(tuning) else None
    out["threshold"] = {"value": 0.5 if threshold is None else threshold,
                        "from": "fixed 0.5 (tuning split has one class)" if threshold is None else "tuning split"}
    out.update(estimable=True, **point_metrics(labels, test["score"].to_numpy(), out["threshold"]["value"]))
    out["ci95"] = bootstrap(test.reset_index(drop=True), out["threshold"]["value"], n_boot, seed)
    return out


def rare_code_mask(codes: pd.Series, train_counts: dict[str, int], k: int) -> np.ndarray:
    """Samples whose input holds a code seen fewer than ``k`` times in training (0: unseen)."""
    return codes.map(lambda cs: any(c and train_counts.get(c, 0) < k for c in cs)).to_numpy(dtype=bool)


def paired_difference(frame: pd.DataFrame, a: list[str], b: list[str], n_boot: int, seed: int) -> dict:
    """AUPRC and AUROC of score columns ``a`` minus ``b`` (``a[i]`` paired with ``b[i]``: the same seed),
    averaged over the pairs, with a 95% interval over resampled patients: one resample serves every
    pair and both sides, so what the two methods share (the patients drawn) cancels out.
    ``frame``: subject_id, label and the score columns, one row per evaluated sample."""
    groups = list(frame.groupby("subject_id").indices.values())
    labels = frame["label"].to_numpy()
    sa, sb = frame[a].to_numpy(), frame[b].to_numpy()

    def diffs(idx: np.ndarray) -> dict[str, float]:
        y = labels[idx]
        return {m: float(np.mean([f(y, sa[idx, i]) - f(y, sb[idx, i]) for i in range(len(a))]))
                for m, f in (("auprc", average_precision_score), ("auroc", roc_auc_score))}

    point = diffs(np.arange(len(frame)))
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {"auprc": [], "auroc": []}
    for _ in range(n_boot):
        idx = np.concatenate([groups[g] for g in rng.integers(0, len(groups), len(groups))])
        if len(set(labels[idx].tolist())) < 2:
            continue
        for k, v in diffs(idx).items():
            draws[k].append(v)
    return {k: {"difference": round(point[k], 4),
                "ci95": [round(float(np.percentile(v, 2.5)), 4), round(float(np.percentile(v, 97.5)), 4)]}
            for k, v in draws.items()}
