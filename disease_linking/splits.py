"""Train / held-out splits of questions: the default policy of a question layout
(``disease_linking.layouts.base.Layout.split``).

MedDDx has groups of questions sharing the same option set; putting one group member in training
and another in validation would leak the answer candidates, so the held-out slice is drawn as
whole groups.
"""

from __future__ import annotations

import random
from collections import defaultdict

from commons.errors import UserError
from disease_linking.questions import MCQItem


def option_set_key(item: MCQItem) -> tuple[str, ...]:
    """Order-free identity of the option set (case and spacing ignored)."""
    return tuple(sorted(" ".join(v.lower().split()) for v in item.options.values()))


def split_by_option_set(items: list[MCQItem], val_fraction: float, seed: int
                        ) -> tuple[list[MCQItem], list[MCQItem]]:
    """(train, val): whole option-set groups go to validation until it holds ``val_fraction`` of the items."""
    return split_by_group(items, val_fraction, seed, option_set_key)


def split_by_group(items: list[MCQItem], val_fraction: float, seed: int, key) -> tuple[list[MCQItem], list[MCQItem]]:
    """(train, val): whole groups (items with the same ``key(item)``) go to validation, in a seeded
    order of the sorted keys, until it holds ``val_fraction`` of the items."""
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    groups: dict = defaultdict(list)
    for item in items:
        groups[key(item)].append(item)
    keys = sorted(groups)  # sorted first: the split must not depend on file order
    random.Random(seed).shuffle(keys)
    target = round(val_fraction * len(items))
    val_keys: set = set()
    n_val = 0
    for k in keys:
        if n_val >= target:
            break
        val_keys.add(k)
        n_val += len(groups[k])
    train = [i for i in items if key(i) not in val_keys]
    val = [i for i in items if key(i) in val_keys]
    return train, val
