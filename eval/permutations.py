"""Option-order robustness: every question scored under K cyclic option orders.

Order ``s`` rotates the options by ``s`` (new letter i shows the option that was at letter
i + s, the answer relabelled with it), so over K = n orders every option sits once at every
letter. Each order's predictions are mapped back to the original letters; the
permutation-debiased prediction averages an option's probability over the orders (a letter
prior then favours no option) and takes the most probable option.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from commons.errors import ConfigError
from disease_linking.questions import MCQItem
from qa.data import cyclic_shift


def check_orders(items: Sequence[MCQItem], k: int) -> None:
    """K must be at least 1 and at most the smallest option count (more would repeat an order)."""
    if k < 1:
        raise ConfigError(f"permutations must be at least 1, got {k}")
    fewest = min((len(it.options) for it in items), default=k)
    if k > fewest:
        raise ConfigError(f"permutations={k} exceeds the {fewest} options of the smallest question; "
                          f"{k} cyclic orders would repeat one")


def to_original(item: MCQItem, shift: int, result: dict) -> dict:
    """A prediction on ``cyclic_shift(item, shift)`` in the original item's letters (``n_codes`` kept)."""
    letters = list(item.options)
    n = len(letters)
    shown = {letters[(j - shift) % n]: letters[j] for j in range(n)}  # shown letter -> original letter
    probs = result.get("probs") or {result["pred"]: 1.0}
    return {"pred": shown[result["pred"]], "probs": {shown[k]: float(v) for k, v in probs.items()},
            "n_codes": int(result.get("n_codes", 0))}


def score_orders(score: Callable[[Sequence[MCQItem]], dict[str, dict]], items: Sequence[MCQItem],
                 k: int) -> list[dict[str, dict]]:
    """Per order s < k: question id -> {"pred", "probs"} in original letters. ``score`` maps
    items to id -> prediction (as :func:`eval.evaluate.score_items` does)."""
    check_orders(items, k)
    orders = []
    for shift in range(k):
        shifted = [cyclic_shift(it, shift) for it in items]
        raw = score(shifted)
        orders.append({it.id: to_original(it, shift, raw[it.id]) for it in items})
    return orders


def debiased(item: MCQItem, orders: Sequence[dict[str, dict]]) -> dict:
    """Option probabilities averaged over the orders; the prediction is the most probable option
    (ties: the earliest letter)."""
    letters = list(item.options)
    # fsum is exactly rounded, so equal multisets of probabilities tie whatever order they come in.
    mean = {x: math.fsum(o[item.id]["probs"].get(x, 0.0) for o in orders) / len(orders) for x in letters}
    return {"pred": max(letters, key=lambda x: (mean[x], -letters.index(x))), "probs": mean}


def order_accuracies(items: Sequence[MCQItem], orders: Sequence[dict[str, dict]]) -> dict:
    """Accuracy under each order, their mean and spread, and the debiased accuracy."""
    if not items:
        return {"n": 0, "per_order": [None] * len(orders), "mean": None, "spread": None, "debiased": None}
    per_order = [sum(o[it.id]["pred"] == it.answer for it in items) / len(items) for o in orders]
    fixed = sum(debiased(it, orders)["pred"] == it.answer for it in items) / len(items)
    return {"n": len(items), "per_order": per_order, "mean": sum(per_order) / len(per_order),
            "spread": max(per_order) - min(per_order), "debiased": fixed}
