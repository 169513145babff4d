"""EhrMamba: embedding layer, Mamba (or transformer) backbone, next-token head, one task head.

Embedding (Fallahpour et al., EhrMamba, 2024): code (concept) embedding from a code-embedding
plug-in (``ehr.code_embeddings``) + token type + age + time (sinusoidal on days) + visit segment +
visit order, summed and layer-normed. Backbones:
  mamba        transformers' ``MambaModel`` with ``use_mambapy=True`` (the parallel scan: on CPU the
               default path's backward grows super-linearly with length; issue 27 measured it)
  transformer  a LLaMA-shaped causal transformer (``LlamaModel``), the baseline and the fast path
Every result says which backbone produced it. Pretraining: next-token prediction over the
vocabulary. Multitask prompted finetuning (MPF): the task token sits first and last in the
sequence (``ehr.sequences``) and one binary head reads the last real position for every task.

Padding: batches are right-padded (:func:`collate`). Both backbones are causal, so a real token
never sees the padding after it, and a sequence's outputs do not depend on how long the batch's
other sequences are. (Mamba takes no attention mask: with left padding the pad positions would run
through its state before the real tokens, which is why the padding goes on the right.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from commons.config import require_choice, require_range
from ehr.code_embeddings import EmbeddingOptions, build_code_embedding, variant_names
from ehr.sequences import MAX_AGE, TYPE_NAMES, Vocab


@dataclass
class ModelOptions:
    """The EhrMamba model."""

    backbone: Literal["mamba", "transformer"] = "mamba"  # mamba: EhrMamba; transformer: the LLaMA-shaped baseline
    code_embedding: str = field(default="learned", metadata={"choices": variant_names})  # ehr/code_embeddings/
    embedding: EmbeddingOptions = field(default_factory=EmbeddingOptions)
    hidden: int = 64  # width of every embedding and the backbone
    layers: int = 2
    state_size: int = 8  # Mamba's SSM state size
    heads: int = 4  # transformer attention heads
    max_visits: int = 512  # visit order embedding rows (later visits share the last)
    dropout: float = 0.1

    def __post_init__(self):
        require_choice(self, "code_embedding", variant_names())
        require_range(self, "hidden", 8)
        require_range(self, "layers", 1)
        require_range(self, "state_size", 1)
        require_range(self, "heads", 1)
        require_range(self, "max_visits", 2)
        require_range(self, "dropout", 0, 1, high_open=True)
        if self.hidden % self.heads:
            from commons.config import FieldError

            raise FieldError("hidden", f"must be a multiple of heads ({self.heads}), got {self.hidden}")


class TimeEmbedding(nn.Module):
    """Sinusoidal features of a continuous time (days), projected: nearby times get nearby vectors."""

    def __init__(self, dim: int, n_freq: int = 16):
        super().__init__()
        self.register_buffer("freq", torch.exp(torch.linspace(math.log(1 / 3650), math.log(1.0), n_freq)))
        self.proj = nn.Linear(2 * n_freq, dim)

    def forward(self, days: torch.Tensor) -> torch.Tensor:
        angles = days.unsqueeze(-1) * self.freq * 2 * math.pi
        return self.proj(torch.cat([angles.sin(), angles.cos()], -1))


class EhrEmbeddings(nn.Module):
    def __init__(self, code_embedding: nn.Module, opts: ModelOptions):
        super().__init__()
        self.codes = code_embedding
        self.types = nn.Embedding(len(TYPE_NAMES), opts.hidden)
        self.ages = nn.Embedding(MAX_AGE, opts.hidden)
        self.times = TimeEmbedding(opts.hidden)
        self.segments = nn.Embedding(3, opts.hidden)
        self.orders = nn.Embedding(opts.max_visits, opts.hidden)
        self.norm = nn.LayerNorm(opts.hidden)
        self.drop = nn.Dropout(opts.dropout)
        self.max_visits = opts.max_visits

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = (self.codes(batch["input_ids"]) + self.types(batch["token_type_ids"]) + self.ages(batch["ages"])
             + self.times(batch["times"]) + self.segments(batch["visit_segments"])
             + self.orders(batch["visit_orders"].clamp(max=self.max_visits - 1)))
        return self.drop(self.norm(x))


def build_backbone(opts: ModelOptions) -> nn.Module:
    """A transformers backbone fed with ``inputs_embeds`` (its own word embeddings stay unused: 1 row)."""
    if opts.backbone == "mamba":
        from transformers import MambaConfig, MambaModel
        from transformers.utils.import_utils import is_mambapy_available

        if not is_mambapy_available():  # without it use_mambapy silently runs the sequential loop
            from commons.errors import ConfigError

            raise ConfigError("the mamba backbone needs the mambapy package for its parallel scan on CPU; "
                              "`pip install mambapy` (or --model.backbone transformer)")

        # bos/eos None: its defaults (1, 2) lie outside the one-row unused vocabulary and transformers warns
        cfg = MambaConfig(vocab_size=1, hidden_size=opts.hidden, state_size=opts.state_size,
                          num_hidden_layers=opts.layers, use_mambapy=True, pad_token_id=0,
                          bos_token_id=None, eos_token_id=None)
        return MambaModel(cfg)
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(vocab_size=1, hidden_size=opts.hidden, intermediate_size=2 * opts.hidden,
                      num_hidden_layers=opts.layers, num_attention_heads=opts.heads,
                      num_key_value_heads=opts.heads, max_position_embeddings=8192, pad_token_id=0,
                      attention_dropout=opts.dropout)
    cfg._attn_implementation = "sdpa"
    return LlamaModel(cfg)


class EhrModel(nn.Module):
    """Embeddings + backbone + next-token head (pretraining) + one binary head for every task (MPF)."""

    def __init__(self, vocab: Vocab, opts: ModelOptions):
        super().__init__()
        self.opts = opts
        code_embedding = build_code_embedding(opts.code_embedding, vocab, opts.hidden, opts.embedding)
        self.embeddings = EhrEmbeddings(code_embedding, opts)
        self.backbone = build_backbone(opts)
        self.lm_head = nn.Linear(opts.hidden, len(vocab))
        self.task_head = nn.Sequential(nn.Dropout(opts.dropout), nn.Linear(opts.hidden, 1))

    def hidden_states(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        embeds = self.embeddings(batch)
        if self.opts.backbone == "mamba":
            # Mamba has no attention mask: right padding (collate) keeps the pads after every real token
            return self.backbone(inputs_embeds=embeds).last_hidden_state
        return self.backbone(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).last_hidden_state

    def pretrain_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-token cross-entropy over the real (non-pad) positions."""
        logits = self.lm_head(self.hidden_states(batch))[:, :-1]
        target = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                           ignore_index=-100)

    def forward(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        """The training loss of ``stage`` (through ``__call__``, so DistributedDataParallel syncs gradients)."""
        if stage == "pretrain":
            return self.pretrain_loss(batch)
        return nn.functional.binary_cross_entropy_with_logits(self.task_logits(batch), batch["labels"])

    def task_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One logit per sequence from its last real position (the task token under MPF)."""
        hidden = self.hidden_states(batch)
        last = batch["attention_mask"].sum(1) - 1  # right padding: the last real token's index
        return self.task_head(hidden[torch.arange(len(hidden)), last]).squeeze(-1)


def collate(samples: list[dict], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad a list of :func:`ehr.sequences.encode_timeline` outputs into a batch (see the module
    docstring: the pads come after the real tokens, where a causal backbone's real outputs cannot see them)."""
    length = max(len(s["input_ids"]) for s in samples)
    out: dict[str, list] = {}
    keys = ("input_ids", "token_type_ids", "ages", "times", "visit_segments", "visit_orders")
    for key in keys:
        dtype = torch.float32 if key == "times" else torch.long
        rows = []
        for s in samples:
            v = torch.tensor(s[key], dtype=dtype)
            fill = pad_id if key == "input_ids" else 0
            rows.append(torch.cat([v, torch.full((length - len(v),), fill, dtype=dtype)]))
        out[key] = torch.stack(rows)
    out["attention_mask"] = torch.stack([torch.cat([torch.ones(len(s["input_ids"]), dtype=torch.long),
                                                    torch.zeros(length - len(s["input_ids"]), dtype=torch.long)])
                                         for s in samples])
    if "label" in samples[0]:
        out["labels"] = torch.tensor([float(s["label"]) for s in samples])
    return out
