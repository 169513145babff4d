"""Training data: Intermediate-tier split by option set, option shuffling, code selection.

MedDDx has groups of questions sharing the same option set; putting one group member in training
and another in validation would leak the answer candidates, so the held-out slice is drawn as
whole groups.
"""

from __future__ import annotations

import copy
import hashlib
import random
from collections import defaultdict
from dataclasses import replace

from commons.errors import UserError
from disease_linking.questions import LETTERS, MCQItem

CODE_FIELDS = ("stem", "stem+options")


def option_set_key(item: MCQItem) -> tuple[str, ...]:
    """Order-free identity of the option set (case and spacing ignored)."""
    return tuple(sorted(" ".join(v.lower().split()) for v in item.options.values()))


def split_by_option_set(items: list[MCQItem], val_fraction: float, seed: int
                        ) -> tuple[list[MCQItem], list[MCQItem]]:
    """(train, val): whole option-set groups go to validation until it holds ``val_fraction`` of the items."""
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    groups: dict[tuple[str, ...], list[MCQItem]] = defaultdict(list)
    for item in items:
        groups[option_set_key(item)].append(item)
    keys = sorted(groups)  # sorted first: the split must not depend on file order
    random.Random(seed).shuffle(keys)
    target = round(val_fraction * len(items))
    val_keys: set[tuple[str, ...]] = set()
    n_val = 0
    for key in keys:
        if n_val >= target:
            break
        val_keys.add(key)
        n_val += len(groups[key])
    train = [i for i in items if option_set_key(i) not in val_keys]
    val = [i for i in items if option_set_key(i) in val_keys]
    return train, val


def stable_seed(*parts: object) -> int:
    """A seed from values, stable across processes (unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def shuffle_options(item: MCQItem, seed: int) -> MCQItem:
    """The item with its options permuted (deterministic in ``seed`` and the item id), answer relabelled.

    Mentions found in options follow their option to its new letter, so option codes keep
    matching their option text.
    """
    perm = list(item.options)
    random.Random(stable_seed(seed, item.id)).shuffle(perm)
    return permute_options(item, perm)


def cyclic_shift(item: MCQItem, shift: int) -> MCQItem:
    """The item with its options rotated by ``shift``: new letter i shows old option i + shift (mod n)."""
    letters = list(item.options)
    n = len(letters)
    return permute_options(item, [letters[(i + shift) % n] for i in range(n)])


def permute_options(item: MCQItem, perm: list[str]) -> MCQItem:
    """The item whose new letter ``LETTERS[i]`` shows the option that was at letter ``perm[i]``;
    the answer and option mentions are relabelled with their option."""
    new_of_old = {old: LETTERS[i] for i, old in enumerate(perm)}
    options = {LETTERS[i]: item.options[old] for i, old in enumerate(perm)}
    mentions = []
    for m in item.mentions:
        field = m.field
        if field.startswith("option:"):
            field = "option:" + new_of_old[field.split(":", 1)[1]]
        mentions.append(replace(m, field=field, codes=copy.deepcopy(m.codes)))
    answer = new_of_old[item.answer] if item.answer else None
    return replace(item, options=options, answer=answer, mentions=mentions)


def linked_codes(item: MCQItem, code_fields: str = "stem", codes_per_mention: int = 1,
                 max_codes: int = 8, fields: list[str] | None = None, min_confidence: float = 0.0) -> list[str]:
    """``SYSTEM:CODE`` strings for the prefix, in a deterministic order, without duplicates.

    Stem mentions come in text order; with ``stem+options`` each option's mentions follow in
    option-letter order. ``fields`` (mention fields such as ``["option:B"]``) overrides
    ``code_fields``. Per mention the best ``codes_per_mention`` codes (linker ranking) whose
    calibrated confidence (disease_linking.calibration) reaches ``min_confidence``; codes of an
    uncalibrated linked file (confidence None) always pass.
    Items without mentions fall back to the authors' ``medical_codes`` list (stem codes).
    """
    if code_fields not in CODE_FIELDS:
        raise UserError(f"code_fields must be one of {', '.join(CODE_FIELDS)}, got {code_fields!r}")
    if fields is None:
        fields = ["stem"] + ([f"option:{k}" for k in item.options] if code_fields == "stem+options" else [])
    out: list[str] = []
    if item.mentions:
        for name in fields:
            for m in sorted((m for m in item.mentions if m.field == name), key=lambda m: (m.start, m.end)):
                for c in m.codes[:codes_per_mention]:
                    if c.confidence is not None and c.confidence < min_confidence:
                        continue
                    key = f"{c.system}:{c.code}"
                    if key not in out:
                        out.append(key)
    elif "stem" in fields:
        out = list(dict.fromkeys(item.medical_codes))
    return out[:max_codes] if max_codes > 0 else out
