"""Prompts in the base model's chat template; the target is the answer letter alone.

The assistant turn is opened by the template's generation prompt, so the next token after the
prompt is the answer letter: training supervises exactly that token and scoring reads the
letters' logits at that position (no sampling, no substring matching).
"""

from __future__ import annotations

from commons.errors import UserError
from disease_linking.questions import MCQItem

SYSTEM_PROMPT = ("You are a medical expert answering multiple-choice questions. "
                 "Reply with the letter of the single correct option and nothing else.")

# Used only for tokenizers without a chat template (plain base models).
_PLAIN_TEMPLATE = "{system}\n\n{user}\n\nAnswer: "


def letters_phrase(letters: list[str]) -> str:
    return ", ".join(letters[:-1]) + f" or {letters[-1]}" if len(letters) > 1 else letters[0]


def user_message(item: MCQItem, context: str | None = None) -> str:
    """The question with its lettered options, optionally preceded by code context (``text`` mode)."""
    parts = []
    if context:
        parts.append(context)
    parts.append(f"Question: {item.question}")
    parts.append("Options:\n" + "\n".join(f"{k}: {v}" for k, v in item.options.items()))
    parts.append(f"Answer with the letter ({letters_phrase(list(item.options))}).")
    return "\n\n".join(parts)


def render_prompt(tokenizer, item: MCQItem, context: str | None = None) -> str:
    """Prompt text ending where the answer letter must come."""
    user = user_message(item, context)
    if getattr(tokenizer, "chat_template", None):
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return _PLAIN_TEMPLATE.format(system=SYSTEM_PROMPT, user=user)


def letter_token_ids(tokenizer, letters: str = "ABCDE") -> dict[str, int]:
    """Token id of each answer letter as the first token of the assistant reply."""
    ids = {}
    for letter in letters:
        toks = tokenizer.encode(letter, add_special_tokens=False)
        if len(toks) != 1:
            raise UserError(f"the base model's tokenizer splits the letter {letter!r} into {len(toks)} "
                              "tokens; letter scoring needs single-token letters")
        ids[letter] = toks[0]
    if len(set(ids.values())) != len(ids):
        raise UserError("the base model's tokenizer maps two answer letters to one token")
    return ids


def encode_prompt(tokenizer, text: str, cutoff_len: int) -> tuple[list[int], bool]:
    """Token ids of a rendered prompt, keeping its last ``cutoff_len`` tokens. Returns (ids, truncated).

    The end holds the options, the instruction and the generation prompt, which the answer needs
    most, so an over-long prompt loses the beginning of its stem instead.
    """
    # The chat template already wrote the special tokens (BOS/<|im_start|>) as text.
    ids = tokenizer.encode(text, add_special_tokens=not getattr(tokenizer, "chat_template", None))
    if cutoff_len > 0 and len(ids) > cutoff_len:
        return ids[-cutoff_len:], True
    return ids, False
