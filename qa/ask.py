"""Ask a QA checkpoint a multiple-choice question.

    medtok-qa ask --checkpoint runs/qa_quick                      # interactive prompt
    medtok-qa ask --checkpoint runs/qa_quick --question $'Which ...?\nA: ...\nB: ...'
    echo '{"question": "...", "options": {"A": "...", "B": "..."}}' | medtok-qa ask --checkpoint DIR --json

Shows the linked mentions, the codes used as prefix, the chosen answer and each option's
probability (``--json``: one JSON object per question). Input may be "stem + lettered option
lines", or JSON in any layout ``disease_linking.questions`` reads (MedDDx ``query``, authors' ``input``, or
``question`` + ``options``). A bad question prints one line and the prompt keeps running.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from typing import TextIO

from commons.errors import UserError
from disease_linking.layouts import parse_auto
from disease_linking.questions import (
    MCQFormatError,
    MCQItem,
    check_encodable,
    check_nesting,
    item_id_of,
    split_question,
)

PROMPT_HELP = ("Type a question, then its options as lines 'A: ...', 'B: ...'; finish with an empty "
               "line (or paste JSON on one line). Ctrl-D quits.")


def ask_id(index: int) -> str:
    """Id of the ``index``-th (0-based) asked question without its own id: ``ask-00001``, ... ."""
    return f"ask-{index + 1:05d}"


def parse_question(text: str, index: int = 0) -> MCQItem:
    """A question from text: JSON (any supported layout) or stem followed by option lines."""
    text = text.strip()
    if not text:
        raise MCQFormatError("empty question")
    if text.startswith("{"):
        check_nesting(text, f"question {index + 1}")
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as err:
            raise MCQFormatError(f"not valid JSON ({err.msg})") from None
        if isinstance(raw, dict) and "answer" not in raw and ("query" in raw):
            stem, options = split_question(str(raw["query"]), f"question {index + 1}")
            return MCQItem(str(raw.get("id", ask_id(index))), stem, options, None)
        if isinstance(raw, dict) and "question" in raw and "options" in raw:
            if not isinstance(raw["options"], dict) or len(raw["options"]) < 2:
                raise MCQFormatError("'options' must map at least two letters to option texts")
            raw = {"answer": None, **raw}
        if isinstance(raw, dict):
            raw = {"id": ask_id(index), **raw}
        check_encodable(raw, f"question {index + 1}")
        return parse_auto(raw, item_id_of(raw, index, "ask"))
    stem, options = split_question(text, f"question {index + 1}")
    return MCQItem(ask_id(index), stem, options, None)


def read_blocks(stream: TextIO, interactive: bool) -> Iterator[str]:
    """Questions from a stream: a JSON line is one question; otherwise blocks end at an empty line."""
    block: list[str] = []
    while True:
        if interactive:
            print("question> " if not block else "... ", end="", file=sys.stderr, flush=True)
        line = stream.readline()
        if not line:
            break
        line = line.rstrip("\n")
        if not block and line.strip().startswith("{"):
            yield line
            continue
        if line.strip():
            block.append(line)
        elif block:
            yield "\n".join(block)
            block = []
    if block:
        yield "\n".join(block)


class Asker:
    """The checkpoint, the optional linker, and the formatting of one answer."""

    def __init__(self, model, linker=None):
        self.model, self.linker = model, linker
        # Each typed question is tokenized once: caching its tokens would only grow the cache.
        model.encoder.cache_tokens = False

    def answer(self, item: MCQItem) -> dict:
        if self.linker is not None and not item.mentions:
            item = self.linker.link_item(item)
        (score,) = self.model.score([item], batch_size=1)
        prefix = self.model.method.item_prefix(item)
        encoded = self.model.encoder.encode(item)
        cut = truncated_parts(item, self.model.encoder.tokenizer.decode(encoded.input_ids)) if encoded.truncated else None
        return {"id": item.id, "truncated": cut, "question": item.question, "options": item.options,
                "prefix_mode": self.model.options.prefix_mode,
                "mentions": [{"text": m.text, "field": m.field,
                              "codes": [f"{c.system}:{c.code}" for c in m.codes]} for m in item.mentions],
                "prefix_codes": prefix.codes, "answer": score["pred"], "probs": score["probs"],
                "tied": tied_letters(score["probs"])}


def tied_letters(probs: dict[str, float]) -> list[str]:
    """The options sharing the top probability when more than one does (else []): the model cannot
    tell them apart, and ``answer`` is merely the first of them in letter order."""
    top = max(probs.values())
    tied = [letter for letter, p in sorted(probs.items()) if math.isclose(p, top, rel_tol=1e-6, abs_tol=1e-9)]
    return tied if len(tied) > 1 else []


def truncated_parts(item: MCQItem, kept: str) -> list[str]:
    """What an over-long prompt lost (it keeps its last tokens): the stem and the options not
    wholly in the ``kept`` text. Compared with spaces collapsed (decoding may respace)."""
    kept = " ".join(kept.split())
    parts = [("the stem", item.question)] + [(f"option {k}", f"{k}: {v}") for k, v in item.options.items()]
    return [name for name, text in parts if " ".join(text.split()) not in kept] or ["the start of the prompt"]


def format_answer(result: dict) -> str:
    lines = []
    if result.get("truncated"):
        lines.append(f"note: the question is longer than the model's prompt; cut: {', '.join(result['truncated'])} "
                     "(the answer saw only the rest)")
    if result["mentions"]:
        lines.append("linked mentions:")
        for m in result["mentions"]:
            lines.append(f"  [{m['field']}] {m['text']!r} -> {', '.join(m['codes']) or '(no code)'}")
    else:
        lines.append("linked mentions: none")
    used = ", ".join(result["prefix_codes"]) or "none"
    lines.append(f"codes used ({result['prefix_mode']}): {used}")
    for letter, text in result["options"].items():
        mark = "*" if letter == result["answer"] else " "
        lines.append(f" {mark} {letter}: {result['probs'][letter]:6.1%}  {text}")
    if result.get("tied"):
        share = result["probs"][result["answer"]]
        lines.append(f"answer: a tie between {', '.join(result['tied'])} ({share:.1%} each): the model does not "
                     f"choose between them ({result['answer']} is only the first by letter)")
    else:
        lines.append(f"answer: {result['answer']}: {result['options'][result['answer']]}")
    return "\n".join(lines)


def load_linker(enabled: bool, data_dir: str | None):
    """The disease linker when installed and its resources load; otherwise None (with a note)."""
    if not enabled:
        return None
    try:
        from disease_linking.linker import Linker

        return Linker.from_cache(data_dir=data_dir)
    except (ImportError, UserError, OSError) as err:
        print(f"note: disease linker unavailable ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
              "only codes given in the input are used", file=sys.stderr)
        return None


def run(asker: Asker, texts: Iterator[str], as_json: bool, out: TextIO = sys.stdout,
        counts: dict | None = None) -> int:
    """Answer each question; a bad one prints one error line and the loop goes on. Returns #errors
    (``counts`` gets ``answered`` and ``errors``)."""
    errors = answered = 0
    for i, text in enumerate(texts):
        try:
            result = asker.answer(parse_question(text, i))
        except (UserError, UnicodeError) as err:  # UnicodeError: text the validator let through
            errors += 1
            msg = f"error: {err}"
            print(json.dumps({"error": str(err)}) if as_json else msg, file=out if as_json else sys.stderr,
                  flush=True)
            continue
        print(json.dumps(result, ensure_ascii=False) if as_json else format_answer(result) + "\n", file=out,
              flush=True)
        answered += 1
    if counts is not None:
        counts.update(answered=answered, errors=errors)
    return errors
