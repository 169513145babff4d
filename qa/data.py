"""Training data: option shuffling, code selection. The train / held-out split is the question
layout's (``disease_linking.splits``; MedDDx: by option set), re-exported here."""

from __future__ import annotations

import copy
import hashlib
import random
from dataclasses import replace

from commons.errors import UserError
from disease_linking.questions import LETTERS, MCQItem
from disease_linking.splits import option_set_key, split_by_option_set

__all__ = ["CODE_FIELDS", "cyclic_shift", "linked_codes", "option_set_key", "permute_options", "shuffle_options",
           "split_by_option_set", "stable_seed"]

CODE_FIELDS = ("stem", "stem+options")


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
