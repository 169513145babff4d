"""``medtok-cosine``: how similar each option's codes are to the stem's, in MedTok space, as one
tagged prefix token per option.

The KG-QA benchmark (docs/kgqa.md) found the answer in MedTok's vectors (the embeddings-only
``ref-medtok`` far above chance) while no LLM fed the raw embeddings (``medtok-options``) left
the floor with the one-epoch budget. Comparing a stem vector with four option vectors is what the
LLM would have to learn from 60 steps; this method does the comparison for it and hands over the
result, the way the ``oracle`` check hands over the answer. It reads no answer: only the cosine
between the mean MedTok embedding of the stem's codes and of each option's codes, so it measures
whether the LLM can use what the vectors carry once it is in a readable form.

Per option the token is ``tag(letter) + W @ [z, p, has_codes]``: ``z`` the cosine standardised
over the question's options, ``p`` a softmax over them (temperature 0.05, the spread of cosines
between related codes), ``has_codes`` whether the option has codes. ``W`` starts at the LM's own
initialisation scale (like the oracle's letter table) so the prefix does not swamp the prompt at
step 0; the ``projector`` option does not apply.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from disease_linking.questions import LETTERS
from qa.prefix_methods.base import ItemPrefix, PrefixMethod, register

TEMPERATURE = 0.05  # softmax temperature over the options' cosines
N_FEATURES = 3  # z-score, softmax weight, has-codes flag


def option_features(stem: torch.Tensor, options: list[torch.Tensor]) -> torch.Tensor:
    """[n_options, 3] features from the stem's codes' vectors ([n, d]) and each option's ([m_i, d]).

    An option without codes (or a stem without codes) gets cosine 0 and the flag 0.
    """
    has = torch.tensor([float(len(o) > 0 and len(stem) > 0) for o in options])
    cos = torch.zeros(len(options))
    if len(stem):
        s = F.normalize(stem.mean(0), dim=0)
        for i, o in enumerate(options):
            if len(o):
                cos[i] = s @ F.normalize(o.mean(0), dim=0)
    if has.sum() == 0:
        return torch.zeros(len(options), N_FEATURES)
    coded = cos[has.bool()]
    z = (cos - coded.mean()) / (coded.std(unbiased=False) + 1e-6) * has
    p = torch.softmax(cos.masked_fill(~has.bool(), float("-inf")) / TEMPERATURE, 0).nan_to_num(0.0)
    return torch.stack([z, p, has], dim=1)


class CosineTokens(nn.Module):
    """One token per option: its letter's learned embedding plus a linear map of its features."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.letters = nn.Embedding(len(LETTERS), hidden_size)
        self.features = nn.Linear(N_FEATURES, hidden_size)
        for weight in (self.letters.weight, self.features.weight):
            nn.init.normal_(weight, std=0.02)  # the LM's own initialisation scale
        nn.init.zeros_(self.features.bias)

    def forward(self, features: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        return self.letters(tags) + self.features(features)


@register
class MedTokCosine(PrefixMethod):
    name = "medtok-cosine"
    summary = "per option, its MedTok cosine to the stem (standardised over the options) as a lettered token"
    color = "#e69f00"
    order = 55

    @property
    def embedding_dim(self) -> int:
        return N_FEATURES

    def item_prefix(self, item) -> ItemPrefix:
        """One token per option; no prefix when no option can be compared with the stem (as the
        other methods give none without codes). ``codes`` lists the codes read."""
        stem_codes = self.codes.known_codes(item, fields=["stem"])
        option_codes = self.codes.option_codes(item)
        letters = list(item.options)
        features = option_features(self.codes.embed(stem_codes), [self.codes.embed(option_codes[x]) for x in letters])
        if not features[:, 2].any():
            return ItemPrefix()
        codes = list(dict.fromkeys(stem_codes + [c for x in letters for c in option_codes[x]]))
        return ItemPrefix(codes, features, tags=[LETTERS.index(x) for x in letters])

    def build_module(self, in_dim: int, hidden_size: int) -> nn.Module:
        return CosineTokens(hidden_size)

    def prefix_embeddings(self, module, emb, mask, tags, token_embeds, token_mask):
        weight = next(module.parameters())
        return module(emb.to(weight.dtype), tags).to(token_embeds.dtype), mask
