"""Tokenized questions as Arrow files: ``Dataset.map`` with a fingerprint of everything that shapes
the tokens, so a rerun (the next run, the next epoch of an unshuffled run, the same validation
slice every epoch) reads its token ids from ``cache_dir()/qa_tokens`` and calls the tokenizer zero times.

The fingerprint (:func:`fingerprint`) hashes a key the caller builds (``PromptEncoder.cache_key``):
the questions' content, the option order (seed and epoch when options are shuffled), the
tokenizer (its serialised vocabulary, merges, special tokens and chat template), the prompt
code, the prefix method with its settings and MedTok artifact, and ``cutoff_len``. A cache entry
holds only token ids and labels; prefix embeddings are looked up again (a table read).

Each entry ``<fingerprint>.arrow`` has a ``<fingerprint>.arrow.sha256`` beside it, written once the
entry is complete. An entry whose checksum is missing or differs (truncated, bit-flipped, written by
an older version) or whose ids fall outside the tokenizer's vocabulary is deleted and rebuilt with a
one-line note on stderr: it is never used, and never left to fail every later run.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from commons.io import cache_dir, sha256_file, write_text
from disease_linking.questions import MCQItem, from_row, items_dataset, to_row

# Part of every key: bump when what a cached row holds, or how it is computed, changes.
CACHE_VERSION = 1
CACHE_SUBDIR = "qa_tokens"
CHECKSUM_SUFFIX = ".sha256"


def _sha(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def questions_sha(items: list[MCQItem]) -> str:
    """Content hash of the questions (what a question file, a split and limits select)."""
    return _sha(json.dumps([to_row(it) for it in items], sort_keys=True, ensure_ascii=False))


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of what decides a tokenizer's ids: its serialised model (fast tokenizers) or vocabulary,
    special tokens and chat template; the same tokenizer saved in two folders shares entries."""
    cached = getattr(tokenizer, "_medtok_fingerprint", None)
    if cached is not None:
        return cached
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    parts = [type(tokenizer).__name__, body, json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str),
             str(getattr(tokenizer, "chat_template", None))]
    digest = _sha("\x1f".join(parts))
    try:  # hashing a large vocabulary once per tokenizer object, not once per batch
        tokenizer._medtok_fingerprint = digest
    except AttributeError:
        pass
    return digest


def prompt_fingerprint() -> str:
    """Hash of the prompt code (system prompt, templates, truncation): any edit there re-tokenizes."""
    from qa import prompts

    return _sha(inspect.getsource(prompts))


def fingerprint(key: dict[str, Any]) -> str:
    return _sha(json.dumps({"version": CACHE_VERSION, **key}, sort_keys=True, default=str))[:40]


def _checksum_file(entry: Path) -> Path:
    return entry.with_name(entry.name + CHECKSUM_SUFFIX)


def _entry_is_intact(entry: Path) -> str | None:
    """None when ``entry`` matches its stored checksum, else why it does not."""
    stored = _checksum_file(entry)
    if not stored.is_file():
        return "no checksum beside it"
    try:
        expected = stored.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return "its checksum file is unreadable"
    return None if sha256_file(entry) == expected else "checksum mismatch: truncated or altered"


def _discard(entry: Path, reason: str) -> None:
    print(f"note: token cache entry {entry} is damaged ({reason}); deleted, rebuilding it", file=sys.stderr)
    entry.unlink(missing_ok=True)
    _checksum_file(entry).unlink(missing_ok=True)


def _ids_out_of_range(columns: dict[str, list], vocab_size: int | None) -> bool:
    if vocab_size is None:
        return False
    return any(i < 0 or i >= vocab_size for row in columns.get("input_ids", []) for i in row)


def cached_map(items: list[MCQItem], tokenize: Callable[[MCQItem], dict], key: dict[str, Any],
               features, use_cache: bool = True, vocab_size: int | None = None) -> dict[str, list]:
    """``tokenize`` over ``items`` through ``Dataset.map``; columns of the result, in item order.

    With ``use_cache`` the result is the Arrow file named by the key's fingerprint, written on the
    first call and read (without calling ``tokenize``) on every later one, after its checksum (and,
    given ``vocab_size``, the range of its token ids) is checked; a damaged entry is rebuilt.
    """
    if not items:  # map over no rows yields no columns at all
        return {name: [] for name in features}
    dataset = items_dataset(items)
    if not use_cache:
        return dataset.map(lambda row: tokenize(from_row(row)), remove_columns=dataset.column_names,
                           features=features, keep_in_memory=True).to_dict()
    folder = cache_dir() / CACHE_SUBDIR
    folder.mkdir(parents=True, exist_ok=True)
    name = fingerprint(key)
    entry = folder / f"{name}.arrow"
    for _ in range(2):  # at most one rebuild: a fresh entry is what tokenize produced
        existed = entry.exists()
        if existed and (reason := _entry_is_intact(entry)):
            _discard(entry, reason)
            existed = False
        mapped = dataset.map(lambda row: tokenize(from_row(row)), remove_columns=dataset.column_names,
                             features=features, new_fingerprint=name, cache_file_name=str(entry),
                             desc="tokenizing questions")
        columns = mapped.to_dict()
        if not _ids_out_of_range(columns, vocab_size):
            if not existed:
                write_text(_checksum_file(entry), sha256_file(entry) + "\n")
            return columns
        _discard(entry, f"token ids outside the vocabulary [0, {vocab_size})")
    raise RuntimeError(f"tokenizing gave ids outside the vocabulary [0, {vocab_size}); a tokenizer bug")
