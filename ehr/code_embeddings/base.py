"""What a code-embedding variant is: token ids [B, L] -> vectors [B, L, hidden]; the registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from commons.config import require_range
from commons.errors import ConfigError, UserError
from commons.registry import Registry
from ehr.sequences import UNK, Vocab

REGISTRY = Registry("code embedding")
register = REGISTRY.register


@dataclass
class EmbeddingOptions:
    """Options the variants share."""

    medtok: str | None = None  # MedTok artifact folder (the medtok_* variants)
    projector_hidden: int = 128  # hidden width of the MedTok / text projector MLP
    text_encoder: str | None = None  # sentence encoder for the text variant (none: the project's MiniLM)
    min_train_count: int = 1  # learned rows for tokens seen fewer times in training become [UNK]

    def __post_init__(self):
        require_range(self, "projector_hidden", 1)
        require_range(self, "min_train_count", 0)


class CodeEmbedding(nn.Module):
    """Base class; subclasses set ``name``/``summary`` and implement ``forward``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    needs_medtok: ClassVar[bool] = False

    def __init__(self, vocab: Vocab, hidden: int, opts: EmbeddingOptions):
        super().__init__()
        self.vocab, self.hidden, self.opts = vocab, hidden, opts

    def learned_ids(self) -> torch.Tensor:
        """Each token's row in a learned table: itself, or [UNK] when training saw it too rarely
        (special and task tokens always keep their own row)."""
        unk = self.vocab.index[UNK]
        rows = []
        for i, tok in enumerate(self.vocab.tokens):
            is_code = not tok.startswith("[")
            rows.append(unk if is_code and self.vocab.train_counts.get(tok, 0) < self.opts.min_train_count else i)
        return torch.tensor(rows, dtype=torch.long)

    def add_projector_with_fallback(self, width: int) -> None:
        """A projector from ``width``-wide vectors into the model, and the learned table a token
        without such a vector falls back to (created in this order: the seeded init rests on it)."""
        self.projector = nn.Sequential(nn.Linear(width, self.opts.projector_hidden), nn.GELU(),
                                       nn.Linear(self.opts.projector_hidden, self.hidden))
        self.table = nn.Embedding(len(self.vocab), self.hidden)
        self.register_buffer("rows", self.learned_ids(), persistent=False)
        self.register_buffer("bins", self.bin_rows(), persistent=False)

    def bin_rows(self) -> torch.Tensor:
        """Lab tokens (``<token>//Q<k>``, ehr/value_bins.py) with a learned row of their own. A variant's
        vector for a lab token is its code's (MedTok and the description encoder know codes, not values),
        so its learned row is added on top to carry the bin; a bin too rare in training adds nothing."""
        rows = self.learned_ids()
        return torch.tensor([tok in self.vocab.value_bins and int(rows[i]) == i for i, tok in enumerate(self.vocab.tokens)],
                            dtype=torch.bool)

    def with_bins(self, ids: torch.Tensor, out: torch.Tensor, has: torch.Tensor, learned: torch.Tensor) -> torch.Tensor:
        """``out`` plus the learned row of the lab tokens that took the variant's vector (:meth:`bin_rows`);
        without lab tokens ``out`` itself (the model is then exactly what it was before value bins)."""
        if not self.vocab.value_bins:
            return out
        return out + (has[ids] & self.bins[ids]).unsqueeze(-1) * learned

    def projected_or_learned(self, ids: torch.Tensor, vectors: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
        """The projected vector where a token has one (``has``), else its learned row."""
        learned = self.table(self.rows[ids])
        return self.with_bins(ids, torch.where(has[ids].unsqueeze(-1), self.projector(vectors[ids]), learned), has,
                              learned)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def load_medtok(opts: EmbeddingOptions, variant: str):
    if not opts.medtok:
        raise ConfigError(f"code embedding {variant} needs a MedTok artifact; pass --model.embedding.medtok PATH")
    from medtok_core.tokenizer import MedTokTokenizer

    return MedTokTokenizer.from_pretrained(opts.medtok)


def medtok_rows(tok, vocab: Vocab) -> tuple[list[int], list[int], dict[str, int]]:
    """(vocab rows, artifact rows) of the tokens MedTok covers, through the code itself or its nearest
    known ancestor; and how many tokens took each route (``exact``, ``ancestor``, ``none``)."""
    import warnings

    from medtok_core.tokenizer import UnknownCodeWarning

    rows, code_ids, routes = [], [], {"exact": 0, "ancestor": 0, "none": 0}
    for token, code in vocab.medtok.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UnknownCodeWarning)
                hit = tok.resolve(code, warn=False)
        except UserError:
            routes["none"] += 1
            continue
        routes["ancestor" if hit.fallback_from else "exact"] += 1
        rows.append(vocab.index[token])
        code_ids.append(hit.code_id)
    return rows, code_ids, routes


def build_code_embedding(name: str, vocab: Vocab, hidden: int, opts: EmbeddingOptions) -> CodeEmbedding:
    if name not in REGISTRY:
        raise ConfigError(f"unknown code embedding {name!r}; choose one of {', '.join(variant_names())}")
    return REGISTRY[name](vocab, hidden, opts)


def variant_names() -> list[str]:
    return sorted(REGISTRY)
