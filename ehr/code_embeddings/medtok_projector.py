"""MedTok embeddings through a projector: a token MedTok covers gets MLP(its MedTok embedding);
every other token (labs, markers, specials) a learned row. ``medtok_frozen`` keeps MedTok's
table fixed; ``medtok_finetuned`` trains it too.

A code outside the artifact's table still gets a MedTok input: its nearest known ancestor's
embedding (the tokenizer's fallback), or, when it has no known ancestor and the artifact carries
the trained model, one encoded from its description by ``MedTokTokenizer.encode_new`` (text path;
the graph path needs KG neighbours that a MEDS folder does not carry)."""

from __future__ import annotations

import torch
from torch import nn

from ehr.code_embeddings.base import CodeEmbedding, load_medtok, medtok_rows, register


def medtok_table(tok, vocab) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """[len(vocab), dim] MedTok embeddings (zeros where none) and the mask of rows that have one."""
    rows, code_ids, routes = medtok_rows(tok, vocab)
    table = torch.zeros(len(vocab), tok.embedding_dim)
    mask = torch.zeros(len(vocab), dtype=torch.bool)
    if rows:
        table[rows] = tok.embeddings[code_ids]
        mask[rows] = True
    missing = [t for t in vocab.medtok if not mask[vocab.index[t]] and vocab.descriptions.get(t)]
    if missing and tok.path is not None and tok._load_model_state():
        new = tok.encode_new([vocab.descriptions[t] for t in missing])["embeddings"]
        for t, e in zip(missing, new, strict=True):
            table[vocab.index[t]], mask[vocab.index[t]] = e, True
        routes["encoded_new"], routes["none"] = len(missing), routes["none"] - len(missing)
    return table, mask, routes


class MedTokProjected(CodeEmbedding):
    needs_medtok = True
    trainable_table = False

    def __init__(self, vocab, hidden, opts):
        super().__init__(vocab, hidden, opts)
        table, mask, self.routes = medtok_table(load_medtok(opts, self.name), vocab)
        if self.trainable_table:
            self.medtok = nn.Parameter(table)
        else:
            self.register_buffer("medtok", table)
        self.register_buffer("has_medtok", mask)
        self.add_projector_with_fallback(table.shape[1])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.projected_or_learned(ids, self.medtok, self.has_medtok)


@register
class MedTokFrozen(MedTokProjected):
    name = "medtok_frozen"
    summary = "MedTok embeddings (frozen) through a trained MLP projector; other tokens learned"


@register
class MedTokFinetuned(MedTokProjected):
    name = "medtok_finetuned"
    summary = "MedTok embeddings fine-tuned with the model, through an MLP projector; other tokens learned"
    trainable_table = True
