"""MedTok prefix tokens: which codes, their embeddings, the projector into the LM's hidden size.

Prefix modes (DESIGN.md):
- ``none``: no prefix (LoRA-only baseline);
- ``text``: the linked codes' descriptions are written into the prompt instead;
- ``medtok``: one prefix token per linked code (capped at ``max_codes``, deterministic order);
- ``medtok-mean``: one token, the mean of the codes' MedTok embeddings (the paper);
- ``shuffled``: control with as many random codes from the artifact vocabulary as the question
  has linked codes, deterministic in (seed, question id): same token budget, no information.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from torch import nn

from medtok_core.errors import MedTokError
from qa.data import linked_codes, stable_seed
from qa.mcq import MCQItem

PREFIX_MODES = ("none", "text", "medtok", "medtok-mean", "shuffled")
EMBEDDING_MODES = ("medtok", "medtok-mean", "shuffled")  # modes that need the MedTok artifact
PROJECTORS = ("linear", "mlp")


class Projector(nn.Module):
    """MedTok embedding (4*d) -> LM hidden size: linear (the paper) or a 2-layer MLP."""

    def __init__(self, in_dim: int, hidden_size: int, kind: str = "linear"):
        super().__init__()
        if kind not in PROJECTORS:
            raise MedTokError(f"projector must be one of {', '.join(PROJECTORS)}, got {kind!r}")
        self.kind = kind
        if kind == "linear":
            self.net = nn.Linear(in_dim, hidden_size)
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden_size), nn.GELU(),
                                     nn.Linear(hidden_size, hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@dataclass
class ItemPrefix:
    """What one question contributes besides its prompt."""

    codes: list[str] = field(default_factory=list)  # codes whose embeddings form the prefix
    embeddings: torch.Tensor | None = None  # [n_tokens, 4*d] float32 (n_tokens 0 for no prefix)
    context: str | None = None  # text-mode description block


class CodeSource:
    """Turns a question's linked codes into prefix embeddings or a description block."""

    def __init__(self, mode: str, tokenizer=None, code_fields: str = "stem", codes_per_mention: int = 1,
                 max_codes: int = 8, seed: int = 0):
        if mode not in PREFIX_MODES:
            raise MedTokError(f"prefix_mode must be one of {', '.join(PREFIX_MODES)}, got {mode!r}")
        if mode in EMBEDDING_MODES + ("text",) and tokenizer is None:
            raise MedTokError(f"prefix_mode {mode} needs a MedTok artifact; pass model.medtok PATH")
        self.mode, self.tok = mode, tokenizer
        self.code_fields, self.codes_per_mention, self.max_codes = code_fields, codes_per_mention, max_codes
        self.seed = seed
        self._all_codes: list[str] | None = None

    @property
    def embedding_dim(self) -> int:
        return int(self.tok.embedding_dim) if self.tok is not None else 0

    def known_codes(self, item: MCQItem) -> list[str]:
        """The item's linked codes as the artifact knows them, capped, in deterministic order.

        A linked code the artifact lacks is replaced by its nearest known ancestor (a quick
        artifact holds ICD-10-CM categories, while the linker emits full codes such as E11.9);
        a code with no known ancestor is dropped. Duplicates after that mapping count once.
        """
        if self.tok is None:
            return []
        codes: list[str] = []
        for code in linked_codes(item, self.code_fields, self.codes_per_mention, 0):
            known = self._nearest_known(code)
            if known is not None and known not in codes:
                codes.append(known)
        return codes[: self.max_codes] if self.max_codes > 0 else codes

    def _nearest_known(self, code: str) -> str | None:
        try:
            hit = self.tok.resolve(code, warn=False)
        except MedTokError:
            return None
        return f"{hit.system}:{hit.code}"

    def _vocabulary(self) -> list[str]:
        if self._all_codes is None:
            v = self.tok.vocab
            self._all_codes = [f"{s}:{c}" for s, c in zip(v["system"].astype(str), v["code"].astype(str), strict=True)]
        return self._all_codes

    def random_codes(self, item: MCQItem, n: int) -> list[str]:
        rng = random.Random(stable_seed("shuffled", self.seed, item.id))
        vocab = self._vocabulary()
        return [vocab[rng.randrange(len(vocab))] for _ in range(n)]

    def prefix(self, item: MCQItem) -> ItemPrefix:
        if self.mode == "none":
            return ItemPrefix()
        codes = self.known_codes(item)
        if self.mode == "text":
            return ItemPrefix(codes, None, self.describe(codes))
        if self.mode == "shuffled":
            codes = self.random_codes(item, len(codes))
        if not codes:
            return ItemPrefix([], torch.zeros(0, self.embedding_dim))
        emb = self.tok.embed(codes).float()
        if self.mode == "medtok-mean":
            emb = emb.mean(dim=0, keepdim=True)
        return ItemPrefix(codes, emb)

    def describe(self, codes: list[str]) -> str | None:
        if not codes:
            return None
        lines = [f"- {c}: {self.tok.describe(c)}" for c in codes]
        return "Medical codes linked to this question:\n" + "\n".join(lines)


def pad_prefixes(prefixes: list[ItemPrefix], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack per-item prefix embeddings: ([B, P, dim] zero-padded at the end, [B, P] bool mask)."""
    sizes = [0 if p.embeddings is None else p.embeddings.shape[0] for p in prefixes]
    width = max(sizes, default=0)
    emb = torch.zeros(len(prefixes), width, dim)
    mask = torch.zeros(len(prefixes), width, dtype=torch.bool)
    for i, (p, n) in enumerate(zip(prefixes, sizes, strict=True)):
        if n:
            emb[i, :n] = p.embeddings
            mask[i, :n] = True
    return emb, mask
