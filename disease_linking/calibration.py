"""Calibrated confidence of linked codes: a Platt-style logistic model, stored as JSON.

The linker's raw scores are not probabilities, and they are not comparable across provenances: a
lexicon entry cross-referenced through the KG scores 0.85-0.99, an embedding-fallback code is a
cosine similarity, and a drug name that equals an ATC substance scores 1.0 but is right far more
often than a disease description match of the same score. The model maps a few features of a
mention's code (:data:`FEATURES`) to the probability that it is an acceptable code for a real
mention. It is fitted on the *tune* half of the gold standard by ``python -m recipes.linking_quality
--fit_calibration true`` (labels: predicted mention matched to a gold mention and its top code
acceptable; an unmatched prediction is a failure) and checked on the *report* half with a
reliability plot. Codes below the top one get the model's value for their own features, capped
at the top code's: only the top code's confidence is calibrated.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from commons.errors import DataFileError
from commons.io import read_json, write_json
from disease_linking.questions import CodeRef, MCQItem, Mention
from disease_linking.rules import UNSUPPORTED, unsupported_synonym

DEFAULT_PATH = Path(__file__).with_name("calibration.json")
FEATURES = ("bias", "score", "fallback", "exact_entry", "parent_rule", "drug", "phenotype", "option",
            "words", "unsupported_xref", "unsupported_synonym")
_L2 = 1.0  # ridge penalty: ~150 training mentions, keep the weights small


def code_features(m: Mention, c: CodeRef) -> list[float]:
    """Feature vector (:data:`FEATURES`) of code ``c`` of mention ``m``."""
    why = c.why or ""
    return [1.0, float(c.score), float(why.startswith("embedding fallback")),
            float(c.score >= 0.95 and not why.startswith("embedding")),  # a description/ATC name itself
            float(why.startswith("common parent")), float(m.kind == "drug"), float(m.kind == "phenotype"),
            float(m.field != "stem"), min(len(m.text.split()), 6) / 6.0,
            float(UNSUPPORTED in why),  # a KG cross-reference the mention's words do not support ...
            float(unsupported_synonym(c))]  # ... reached through a synonym (see disease_linking.rules)


def fit(x: np.ndarray, y: np.ndarray, iters: int = 50) -> np.ndarray:
    """L2-regularized logistic regression by Newton's method (the bias is not penalized)."""
    w = np.zeros(x.shape[1])
    reg = np.full(x.shape[1], _L2)
    reg[0] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-x @ w))
        grad = x.T @ (p - y) + reg * w
        hess = x.T @ (x * (p * (1 - p))[:, None]) + np.diag(reg) + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


class Calibrator:
    """Logistic model over :func:`code_features`."""

    def __init__(self, coef: list[float], meta: dict | None = None):
        if len(coef) != len(FEATURES):
            raise DataFileError(f"calibration has {len(coef)} weights for {len(FEATURES)} features; refit it")
        self.coef = np.asarray(coef, dtype=np.float64)
        self.meta = meta or {}

    def prob(self, m: Mention, c: CodeRef) -> float:
        z = float(np.dot(self.coef, code_features(m, c)))
        return 1.0 / (1.0 + math.exp(-z))

    def apply(self, items: list[MCQItem]) -> None:
        """Set ``confidence`` on every code (in place); lower ranks capped at the top code's."""
        for item in items:
            for m in item.mentions:
                cap = 1.0
                for rank, c in enumerate(m.codes):
                    p = round(self.prob(m, c), 4)
                    c.confidence = p if rank == 0 else min(p, cap)
                    cap = c.confidence if rank == 0 else cap

    def save(self, path: str | Path = DEFAULT_PATH) -> None:
        write_json(path, {"model": "logistic", "features": list(FEATURES),
                          "coef": [round(float(v), 6) for v in self.coef], **self.meta})

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PATH) -> Calibrator:
        path = Path(path)
        if not path.is_file():
            raise DataFileError(f"calibration file {path} does not exist; fit it with "
                                "python -m recipes.linking_quality --fit_calibration true")
        d = read_json(path)
        if d.get("features") != list(FEATURES):
            raise DataFileError(f"calibration file {path} was fitted on other features; refit it")
        return cls(d["coef"], {k: v for k, v in d.items() if k not in ("model", "features", "coef")})


def drop_low_confidence(items: list[MCQItem], min_confidence: float) -> list[MCQItem]:
    """Items whose codes below ``min_confidence`` are removed (and mentions left without codes).
    Codes without a confidence (an uncalibrated linked file) are kept."""
    if min_confidence <= 0:
        return items
    for item in items:
        for m in item.mentions:
            m.codes = [c for c in m.codes if c.confidence is None or c.confidence >= min_confidence]
        item.mentions = [m for m in item.mentions if m.codes]
    return items


def reliability(conf: list[float], right: list[bool], bins: int = 10) -> list[dict]:
    """Equal-width bins of confidence: count, mean confidence and observed accuracy per bin."""
    out = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, p in enumerate(conf) if lo <= p < hi or (b == bins - 1 and p == 1.0)]
        if idx:
            out.append({"lo": lo, "hi": hi, "n": len(idx), "confidence": round(float(np.mean([conf[i] for i in idx])), 4),
                        "accuracy": round(float(np.mean([right[i] for i in idx])), 4)})
    return out


def expected_calibration_error(table: list[dict]) -> float:
    n = sum(r["n"] for r in table)
    return round(sum(r["n"] * abs(r["confidence"] - r["accuracy"]) for r in table) / n, 4) if n else 0.0
