"""Histogram gradient boosting (scikit-learn's XGBoost-like learner, which takes missing values
natively: nothing imputed) on per-window aggregates of each sample's triplets: per numeric feature
its last, min, max and mean normalised value and its count; per categorical code its count. The
columns are the features seen in the training samples."""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier

AGGREGATES = ("last", "min", "max", "mean", "count")


def aggregate_columns(train: list[dict]) -> tuple[list[int], list[int]]:
    """(numeric feature ids, categorical code ids) present in the training samples."""
    numeric, categorical = set(), set()
    for s in train:
        numeric.update(s["tokens"][s["numeric"]].tolist())
        categorical.update(s["tokens"][~s["numeric"]].tolist())
    return sorted(numeric), sorted(categorical)


def aggregate_matrix(samples: list[dict], normalised: list[np.ndarray], numeric: list[int],
                     categorical: list[int]) -> np.ndarray:
    """[samples, 5 * numeric + categorical]; NaN where a feature was not observed (count 0)."""
    col_num = {t: i for i, t in enumerate(numeric)}
    col_cat = {t: i for i, t in enumerate(categorical)}
    x = np.full((len(samples), len(AGGREGATES) * len(numeric) + len(categorical)), np.nan, dtype=np.float32)
    x[:, len(AGGREGATES) * len(numeric):] = 0
    x[:, 4 * len(numeric):5 * len(numeric)] = 0
    for i, (s, values) in enumerate(zip(samples, normalised, strict=True)):
        by_feature: dict[int, list[float]] = {}
        for tok, val, is_num in zip(s["tokens"].tolist(), values.tolist(), s["numeric"].tolist(), strict=True):
            if is_num and tok in col_num:
                by_feature.setdefault(tok, []).append(val)  # tokens are oldest first: the list's end is last
            elif not is_num and tok in col_cat:
                x[i, len(AGGREGATES) * len(numeric) + col_cat[tok]] += 1
        for tok, vals in by_feature.items():
            j, n = col_num[tok], len(numeric)
            x[i, [j, n + j, 2 * n + j, 3 * n + j, 4 * n + j]] = [vals[-1], min(vals), max(vals), np.mean(vals), len(vals)]
    return x


def fit_predict_hgb(train: list[dict], train_values: list[np.ndarray], test: list[dict],
                    test_values: list[np.ndarray], seed: int) -> np.ndarray:
    """P(label = 1) for ``test`` from a model fitted on ``train``."""
    numeric, categorical = aggregate_columns(train)
    x_train = aggregate_matrix(train, train_values, numeric, categorical)
    y = np.array([s["label"] for s in train])
    model = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, random_state=seed)
    model.fit(x_train, y)
    return model.predict_proba(aggregate_matrix(test, test_values, numeric, categorical))[:, 1]
