"""MedFuse and the GRU baseline over the same tokens.

MedFuse (one token per triplet or categorical event, then [CLS] first):
    numeric      x = W · fusion(identity(feature), value_embedding(value)) + time(hours) + type
    categorical  x = W · identity(code)                                       + time(hours) + type
identity is the code-embedding plug-in shared with EhrMamba (``ehr.code_embeddings``: learned,
medtok_frozen, medtok_finetuned, medtok_tokens, text), so MedTok enters wherever codes appear;
value_embedding is affine in the normalised value (Linear(1, value_dim)), so MuFuse's product is
value-conditioned; the time embedding (``ehr.model.TimeEmbedding``) is added, never multiplied;
W projects feature_dim to the encoder width when they differ. A standard ``torch.nn.TransformerEncoder``
reads the tokens; a linear head reads [CLS].

GRU baseline: the same tokens, oldest first; input = [identity(feature); value; numeric; days before]
(the learned table), a GRU, a head on the last real step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from commons.config import FieldError, require_choice, require_range
from ehr.code_embeddings import EmbeddingOptions, build_code_embedding, variant_names
from ehr.medfuse.fusion import build_fusion, fusion_names
from ehr.model import TimeEmbedding
from ehr.sequences import Vocab


@dataclass
class MedFuseOptions:
    """The MedFuse model (and the GRU baseline's widths)."""

    fusion: str = field(default="mufuse", metadata={"choices": fusion_names})  # ehr/medfuse/fusion.py
    code_embedding: str = field(default="learned", metadata={"choices": variant_names})  # ehr/code_embeddings/
    embedding: EmbeddingOptions = field(default_factory=EmbeddingOptions)
    feature_dim: int = 32  # feature-identity (code) embedding width
    value_dim: int = 32  # value embedding width; feature_dim must be a multiple (the partition factor)
    hidden: int = 32  # encoder width
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1

    def __post_init__(self):
        require_choice(self, "fusion", fusion_names())
        require_choice(self, "code_embedding", variant_names())
        for name in ("feature_dim", "value_dim", "hidden", "layers", "heads"):
            require_range(self, name, 1)
        require_range(self, "dropout", 0, 1, high_open=True)
        if self.hidden % self.heads:
            raise FieldError("hidden", f"must be a multiple of heads ({self.heads}), got {self.hidden}")
        if self.fusion != "concat" and self.feature_dim % self.value_dim:
            raise FieldError("value_dim", f"must divide feature_dim ({self.feature_dim}) for {self.fusion}, "
                                          f"got {self.value_dim}")


class MedFuseEmbeddings(nn.Module):
    """Tokens -> vectors: fused numeric triplets and categorical codes, time and type added."""

    def __init__(self, vocab: Vocab, opts: MedFuseOptions):
        super().__init__()
        self.identity = build_code_embedding(opts.code_embedding, vocab, opts.feature_dim, opts.embedding)
        self.value = nn.Linear(1, opts.value_dim)
        self.fusion = build_fusion(opts.fusion, opts.feature_dim, opts.value_dim)
        self.proj = nn.Identity() if opts.feature_dim == opts.hidden else nn.Linear(opts.feature_dim, opts.hidden)
        self.time = TimeEmbedding(opts.hidden)
        self.types = nn.Embedding(2, opts.hidden)  # 0 categorical, 1 numeric

    def content(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each token's identity, fused with its value where it has one: [B, L, feature_dim]."""
        f = self.identity(batch["tokens"])
        fused = self.fusion(f, self.value(batch["values"].unsqueeze(-1)))
        return torch.where(batch["numeric"].unsqueeze(-1), fused, f)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        days = batch["hours"] / 24
        return self.proj(self.content(batch)) + self.time(days) + self.types(batch["numeric"].long())


class MedFuse(nn.Module):
    def __init__(self, vocab: Vocab, opts: MedFuseOptions):
        super().__init__()
        self.embeddings = MedFuseEmbeddings(vocab, opts)
        self.cls = nn.Parameter(torch.randn(opts.hidden) * 0.02)
        layer = nn.TransformerEncoderLayer(opts.hidden, opts.heads, 2 * opts.hidden, opts.dropout, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, opts.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(opts.hidden)
        self.head = nn.Linear(opts.hidden, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One logit per sample."""
        x = self.embeddings(batch)
        x = torch.cat([self.cls.expand(x.shape[0], 1, -1), x], 1)
        pad = torch.cat([torch.zeros_like(batch["mask"][:, :1]), ~batch["mask"]], 1)
        return self.head(self.norm(self.encoder(x, src_key_padding_mask=pad)[:, 0])).squeeze(-1)


class GruBaseline(nn.Module):
    """A GRU over the same tokens (learned feature table), head on the last real step."""

    def __init__(self, vocab: Vocab, opts: MedFuseOptions):
        super().__init__()
        self.identity = nn.Embedding(len(vocab), opts.feature_dim)
        self.gru = nn.GRU(opts.feature_dim + 3, opts.hidden, batch_first=True)
        self.head = nn.Linear(opts.hidden, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = torch.cat([self.identity(batch["tokens"]), batch["values"].unsqueeze(-1),
                       batch["numeric"].float().unsqueeze(-1), (batch["hours"] / 24).unsqueeze(-1)], -1)
        lengths = batch["mask"].sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, last = self.gru(packed)
        return self.head(last[-1]).squeeze(-1)


def collate(samples: list[dict], normalised: list, empty_token: int) -> dict[str, torch.Tensor]:
    """Right-pad samples' tokens (``normalised``: their normalised values) into a batch. A sample with
    no token gets one categorical ``empty_token`` ([PAD]) so every row has a real step."""
    length = max(max(len(s["tokens"]) for s in samples), 1)
    batch = {"tokens": torch.full((len(samples), length), empty_token, dtype=torch.long),
             "values": torch.zeros(len(samples), length), "hours": torch.zeros(len(samples), length),
             "numeric": torch.zeros(len(samples), length, dtype=torch.bool),
             "mask": torch.zeros(len(samples), length, dtype=torch.bool)}
    for i, (s, values) in enumerate(zip(samples, normalised, strict=True)):
        n = len(s["tokens"])
        batch["mask"][i, :max(n, 1)] = True
        if n:
            batch["tokens"][i, :n] = torch.tensor(s["tokens"])
            batch["values"][i, :n] = torch.tensor(values)
            batch["hours"][i, :n] = torch.tensor(s["hours"])
            batch["numeric"][i, :n] = torch.tensor(s["numeric"])
    batch["labels"] = torch.tensor([float(s["label"]) for s in samples])
    return batch
