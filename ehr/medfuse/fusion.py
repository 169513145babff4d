"""How an observation's feature-identity embedding f [.., d_f] and value embedding v [.., d_v] become
one vector [.., d_f]; plug-ins registered by name (``--model.fusion``).

    mufuse     f ⊙ v, MedFuse's MuFuse: value-conditioned multiplication. With d_f = p · d_v (partition
               factor p) f is cut into p consecutive parts of width d_v and each part is multiplied
               by v elementwise (a generalised Hadamard product); p = 1 is the plain Hadamard product.
    additive   f + v, the same partition (v added to each part): the ablation that keeps everything
               but the multiplication
    concat     Linear([f; v]) -> d_f: the concatenative ablation

The time embedding is added after fusion by the model (never multiplied), so these see no time.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from commons.errors import ConfigError
from commons.registry import Registry

REGISTRY = Registry("fusion")
register = REGISTRY.register


def partition_factor(feature_dim: int, value_dim: int) -> int:
    """p with feature_dim = p * value_dim; a user error otherwise."""
    if value_dim < 1 or feature_dim % value_dim:
        raise ConfigError(f"feature_dim ({feature_dim}) must be a multiple of value_dim ({value_dim}) "
                          "for the partitioned fusion; e.g. --model.value_dim "
                          f"{feature_dim} or {max(feature_dim // 2, 1)}")
    return feature_dim // value_dim


class Fusion(nn.Module):
    """Base class: subclasses set ``name``/``summary`` and implement ``forward(f, v)``."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""

    def __init__(self, feature_dim: int, value_dim: int):
        super().__init__()
        self.feature_dim, self.value_dim = feature_dim, value_dim

    def forward(self, f: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def _parts(f: torch.Tensor, value_dim: int) -> torch.Tensor:
    """[.., p * d_v] -> [.., p, d_v]: the partition MuFuse and the additive ablation share."""
    return f.unflatten(-1, (f.shape[-1] // value_dim, value_dim))


class _PartitionedFusion(Fusion):
    """Each value-width slice of the feature embedding combined with the value embedding
    (``combine``): MuFuse multiplies, its additive ablation adds, over the same partition."""

    def __init__(self, feature_dim, value_dim):
        super().__init__(feature_dim, value_dim)
        self.partitions = partition_factor(feature_dim, value_dim)

    def forward(self, f, v):
        return self.combine(_parts(f, self.value_dim), v.unsqueeze(-2)).flatten(-2)


@register
class MuFuse(_PartitionedFusion):
    name = "mufuse"
    summary = "value-conditioned multiplicative fusion (generalised Hadamard product, partition factor)"
    combine = staticmethod(torch.mul)


@register
class Additive(_PartitionedFusion):
    name = "additive"
    summary = "additive fusion f + v over the same partition (ablation)"
    combine = staticmethod(torch.add)


@register
class Concat(Fusion):
    name = "concat"
    summary = "concatenation [f; v] through a linear layer (ablation)"

    def __init__(self, feature_dim, value_dim):
        super().__init__(feature_dim, value_dim)
        self.proj = nn.Linear(feature_dim + value_dim, feature_dim)

    def forward(self, f, v):
        return self.proj(torch.cat([f, v], -1))


def fusion_names() -> list[str]:
    return sorted(REGISTRY)


def build_fusion(name: str, feature_dim: int, value_dim: int) -> Fusion:
    if name not in REGISTRY:
        raise ConfigError(f"unknown fusion {name!r}; choose one of {', '.join(fusion_names())}")
    return REGISTRY[name](feature_dim, value_dim)
