"""A leaner forward for PEFT's LoRA linear layers (same weights, same checkpoints).

PEFT keeps the adapter in float32 over a bf16 base (good: small updates survive) and therefore
computes ``base(x) + B(A(dropout(x.float()))) * scaling`` in float32: per adapted layer and step
a float32 copy of the activations, a float32 dropout, a float32 output of ``B`` that is scaled,
added and cast back to bf16. The profiler showed these element-wise passes (``copy_``, ``mul``,
``add``, ``bernoulli_``) taking about as long as the matmuls themselves on a CPU.

:func:`lean_lora` gives each plain LoRA layer a forward that instead casts the tiny ``A`` and
``scaling * B`` to the activations' dtype and adds ``dropout(x) @ A^T @ (s B)^T`` into the base
output inside one ``addmm`` (no extra full-size pass). Master weights, optimizer state and
checkpoints stay float32; only the arithmetic of the adapter follows the activations' dtype, as
under autocast. With a float32 model the operations are PEFT's up to summation order (same
dropout draws, results equal to ~1e-7).
"""

from __future__ import annotations

import types

import torch
from torch import nn


def _peft_forward(layer):
    return type(layer).forward.__get__(layer)


def _lean_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    active = self.active_adapters
    if (args or kwargs or self.disable_adapters or self.merged or len(active) != 1
            or active[0] not in self.lora_A or active[0] in self.lora_variant
            or not isinstance(self.base_layer, nn.Linear)):
        return _peft_forward(self)(x, *args, **kwargs)  # anything unusual: PEFT's own path
    name = active[0]
    base = self.base_layer
    a = self.lora_A[name].weight.to(x.dtype)  # [r, in]
    b = (self.lora_B[name].weight * self.scaling[name]).to(x.dtype)  # [out, r]: scaling on r*out values
    x2 = x.reshape(-1, x.shape[-1])
    low = self.lora_dropout[name](x2) @ a.t()  # [N, r]
    out = nn.functional.linear(x2, base.weight, base.bias)
    out = out.addmm_(low, b.t())  # base output + adapter, one pass
    return out.view(*x.shape[:-1], out.shape[-1])


def lean_lora(model: nn.Module) -> int:
    """Give every PEFT LoRA ``Linear`` of ``model`` the lean forward; returns how many."""
    from peft.tuners.lora import Linear as LoraLinear

    n = 0
    for module in model.modules():
        if type(module) is LoraLinear:  # exactly PEFT's dense layer (not quantized/other variants)
            module.forward = types.MethodType(_lean_forward, module)
            n += 1
    return n
