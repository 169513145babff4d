"""What a prefix method is, and the registry every part of the project reads methods from.

A prefix method decides what a question contributes besides its prompt: prefix embeddings built
from its linked codes (and how they are turned into LM inputs), or text written into the prompt.
One class per file in ``qa/prefix_methods/``, registered by name with :func:`register`;
training, scoring, checkpoints, the pipeline, the report and ``--help`` only ever ask the
registry, so adding a method means adding its file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn

from commons.errors import ConfigError, UserError
from commons.registry import Registry
from qa.prefix import ItemPrefix, Projector

if TYPE_CHECKING:
    from disease_linking.questions import MCQItem
    from qa.prefix import CodeSource

STEM_TAG = 0  # prefix-token tag of stem codes; option letter i (A=0) is tagged i + 1


class PrefixMethod:
    """Base class. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # one line, shown by --help and in reports
    label: ClassVar[str] = ""  # how reports and plots call it (default: name)
    color: ClassVar[str] = "#000000"  # its colour in plots
    order: ClassVar[int] = 100  # position in reports (lower first)
    needs_artifact: ClassVar[bool] = True  # reads the MedTok artifact (embeddings or descriptions)
    trainable: ClassVar[bool] = True  # has a prefix module trained beside the LoRA adapter
    code_fields: ClassVar[str | None] = None  # which linked fields it reads; None: the configured ones
    diagnostic: ClassVar[bool] = False  # a check of the pipeline itself (reads the answer): never a result

    def __init__(self, options, codes: CodeSource | None):
        if self.needs_artifact and codes is None:
            raise UserError(f"prefix_mode {self.name} needs a MedTok artifact; pass model.medtok PATH")
        self.options, self.codes = options, codes

    @property
    def embedding_dim(self) -> int:
        return self.codes.embedding_dim if self.codes is not None else 0

    # ---- per question (data path, CPU) ----------------------------------------------------------
    def item_prefix(self, item: MCQItem) -> ItemPrefix:
        """The question's prefix: codes and their MedTok embeddings by default."""
        codes = self.codes.known_codes(item, self.code_fields)
        return ItemPrefix(codes, self.codes.embed(codes))

    # ---- the trainable module and the LM inputs (model path) ------------------------------------
    def build_module(self, in_dim: int, hidden_size: int) -> nn.Module | None:
        """The module saved as the checkpoint's projector (None for methods without one)."""
        return Projector(in_dim, hidden_size, self.options.projector) if self.trainable else None

    def prefix_embeddings(self, module: nn.Module, emb: torch.Tensor, mask: torch.Tensor, tags: torch.Tensor,
                          token_embeds: torch.Tensor, token_mask: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, P, H] prefix embeddings in the LM's dtype, [B, P] bool mask) for a collated batch.

        ``emb``/``mask``/``tags`` are the padded per-item prefixes; ``token_embeds``/``token_mask``
        the prompt's input embeddings (left-padded), for methods that read the question.
        """
        weight = next(module.parameters())
        return module(emb.to(weight.dtype)).to(token_embeds.dtype), mask


_REGISTRY = Registry("prefix method")
register = _REGISTRY.register  # class decorator of a prefix-method file


def unregister(name: str) -> None:
    """Remove a method (tests that register their own)."""
    _REGISTRY.pop(name, None)


def method_names(diagnostics: bool = False) -> list[str]:
    """Registered names in report order; diagnostic methods (e.g. ``oracle``) only when asked for,
    so "every registered method" never includes one."""
    names = [n for n in _REGISTRY if diagnostics or not _REGISTRY[n].diagnostic]
    return sorted(names, key=lambda n: (_REGISTRY[n].order, n))


def get_method(name: str) -> type[PrefixMethod]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown prefix method {name!r}; registered: {', '.join(method_names(diagnostics=True))}") from None
