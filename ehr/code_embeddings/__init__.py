"""Code-embedding variants of the EHR models, one file each, registered by name (see ``base.py``).

Importing this package imports every module in it, so a new ``ehr/code_embeddings/<name>.py`` that
decorates its class with :func:`register` is available to ``--model.code_embedding <name>``.
"""

from __future__ import annotations

import importlib
import pkgutil

from ehr.code_embeddings.base import (
    CodeEmbedding,
    EmbeddingOptions,
    build_code_embedding,
    register,
    variant_names,
)

__all__ = ["CodeEmbedding", "EmbeddingOptions", "build_code_embedding", "register", "variant_names"]

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")
