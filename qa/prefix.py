"""Building blocks of the prefix methods (``qa/prefix_methods/``): which codes a question has, as
the MedTok artifact knows them, their embeddings, the projector into the LM's hidden size, and
batch padding."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from torch import nn

from commons.errors import UserError
from disease_linking.questions import MCQItem
from qa.data import CODE_FIELDS, linked_codes, stable_seed

PROJECTORS = ("linear", "mlp")


@dataclass
class ItemPrefix:
    """What one question contributes besides its prompt."""

    codes: list[str] = field(default_factory=list)  # codes whose embeddings form the prefix
    embeddings: torch.Tensor | None = None  # [n_tokens, 4*d] float32 (n_tokens 0 for no prefix)
    context: str | None = None  # text written into the prompt (the `text` method)
    tags: list[int] | None = None  # per prefix token: STEM_TAG or option index + 1


class Projector(nn.Module):
    """MedTok embedding (4*d) -> LM hidden size: linear (the paper) or a 2-layer MLP."""

    def __init__(self, in_dim: int, hidden_size: int, kind: str = "linear"):
        super().__init__()
        if kind not in PROJECTORS:
            raise UserError(f"projector must be one of {', '.join(PROJECTORS)}, got {kind!r}")
        self.kind = kind
        if kind == "linear":
            self.net = nn.Linear(in_dim, hidden_size)
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden_size), nn.GELU(),
                                     nn.Linear(hidden_size, hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CodeSource:
    """A question's linked codes as the MedTok artifact knows them, their embeddings and descriptions."""

    def __init__(self, tokenizer, code_fields: str = "stem", codes_per_mention: int = 1, max_codes: int = 8,
                 seed: int = 0, min_confidence: float = 0.0):
        if code_fields not in CODE_FIELDS:
            raise UserError(f"code_fields must be one of {', '.join(CODE_FIELDS)}, got {code_fields!r}")
        self.tok = tokenizer
        self.code_fields, self.codes_per_mention, self.max_codes = code_fields, codes_per_mention, max_codes
        self.seed = seed
        self.min_confidence = min_confidence
        self._all_codes: list[str] | None = None

    @property
    def embedding_dim(self) -> int:
        return int(self.tok.embedding_dim)

    def known_codes(self, item: MCQItem, code_fields: str | None = None, fields: list[str] | None = None
                    ) -> list[str]:
        """The item's linked codes as the artifact knows them, capped, in deterministic order.

        ``code_fields`` (default: the configured one) or an explicit list of mention ``fields``
        chooses where codes come from. A linked code the artifact lacks is replaced by its
        nearest known ancestor (a quick artifact holds ICD-10-CM categories, while the linker
        emits full codes such as E11.9); a code with no known ancestor is dropped. Duplicates
        after that mapping count once.
        """
        codes: list[str] = []
        for code in linked_codes(item, code_fields or self.code_fields, self.codes_per_mention, 0, fields,
                                 self.min_confidence):
            known = self._nearest_known(code)
            if known is not None and known not in codes:
                codes.append(known)
        return codes[: self.max_codes] if self.max_codes > 0 else codes

    def option_codes(self, item: MCQItem) -> dict[str, list[str]]:
        """Letter -> the option's own known codes (each option capped on its own, as
        ``medtok-options`` reads them); an option without codes maps to []."""
        return {x: self.known_codes(item, fields=[f"option:{x}"]) for x in item.options}

    def _nearest_known(self, code: str) -> str | None:
        try:
            hit = self.tok.resolve(code, warn=False)
        except UserError:
            return None
        return f"{hit.system}:{hit.code}"

    def embed(self, codes: list[str]) -> torch.Tensor:
        """[len(codes), 4*d] float32 (an empty [0, 4*d] tensor for no codes)."""
        return self.tok.embed(codes).float() if codes else torch.zeros(0, self.embedding_dim)

    def _vocabulary(self) -> list[str]:
        if self._all_codes is None:
            v = self.tok.vocab
            self._all_codes = [f"{s}:{c}" for s, c in zip(v["system"].astype(str), v["code"].astype(str), strict=True)]
        return self._all_codes

    def random_codes(self, item: MCQItem, n: int) -> list[str]:
        """``n`` artifact codes drawn deterministically from (seed, question id)."""
        rng = random.Random(stable_seed("shuffled", self.seed, item.id))
        vocab = self._vocabulary()
        return [vocab[rng.randrange(len(vocab))] for _ in range(n)]

    def describe(self, codes: list[str]) -> str | None:
        if not codes:
            return None
        lines = [f"- {c}: {self.tok.describe(c)}" for c in codes]
        return "Medical codes linked to this question:\n" + "\n".join(lines)


def pad_prefixes(prefixes: list[ItemPrefix], dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack per-item prefixes: [B, P, dim] embeddings zero-padded at the end, [B, P] bool mask,
    [B, P] long tags (0 where a method does not tag its tokens)."""
    sizes = [0 if p.embeddings is None else p.embeddings.shape[0] for p in prefixes]
    width = max(sizes, default=0)
    emb = torch.zeros(len(prefixes), width, dim)
    mask = torch.zeros(len(prefixes), width, dtype=torch.bool)
    tags = torch.zeros(len(prefixes), width, dtype=torch.long)
    for i, (p, n) in enumerate(zip(prefixes, sizes, strict=True)):
        if n:
            emb[i, :n] = p.embeddings
            mask[i, :n] = True
            if p.tags is not None:
                tags[i, :n] = torch.tensor(p.tags[:n])
    return emb, mask, tags
