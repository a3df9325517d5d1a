"""A compact frozen base for LoRA (``model.quantize``): the base model's weights are frozen,
so they need not be stored in fp32.

``bf16-storage``: every ``nn.Linear`` and ``nn.Embedding`` weight of the base (the tied
embedding / lm_head included) is stored in bfloat16 - half the bytes - and computed in the
activations' dtype (fp32 on CPU): a linear layer casts its weight to fp32 for the matmul and
keeps only the bf16 weight for backward (``_StoredLinear``: autograd would otherwise hold an
fp32 copy of every weight until the backward pass, and nothing would be saved at the peak);
an embedding looks up bf16 rows and returns fp32. Norms, biases and the LoRA weights stay
fp32, and the LoRA weights are the only ones trained. Applied before peft wraps the model, so
peft's LoRA layers see an ordinary ``nn.Linear`` base layer (adapters kept fp32 by peft's
``autocast_adapter_dtype``). The adapter is trained against the bf16-rounded base; `rayft
export` merges it into the full-precision base (as QLoRA adapters are merged).
"""
from __future__ import annotations

import torch

QUANTIZE = ("none", "bf16-storage")


class _FrozenLinearFn(torch.autograd.Function):
    """y = x W^T + b with a frozen W stored in a low-precision dtype; only W (compact) is saved
    for backward (gradients for x, and for b when it is trained)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return torch.nn.functional.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        gx = grad @ weight.to(grad.dtype) if ctx.needs_input_grad[0] else None
        gb = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.needs_input_grad[2] else None
        return gx, None, gb


class _StoredLinear(torch.nn.Linear):
    """An ``nn.Linear`` whose frozen weight is stored compactly (trainable: plain Linear)."""

    def forward(self, x):
        if self.weight.requires_grad:
            return torch.nn.functional.linear(x, self.weight.to(x.dtype),
                                              None if self.bias is None else self.bias.to(x.dtype))
        return _FrozenLinearFn.apply(x, self.weight, self.bias)


def _embedding_to_fp32(module, args, output):
    return output.float() if output.dtype != torch.float32 else output


def store_base_compact(model: torch.nn.Module, mode: str, compute_dtype=torch.float32) -> torch.nn.Module:
    """Convert the base ``model`` (loaded in any float dtype; build.py loads it in bf16 so no
    fp32 copy ever exists) in place for ``model.quantize=mode``; returns it. Every other
    parameter (norms, biases) is cast to ``compute_dtype``."""
    if mode == "none":
        return model
    if mode != "bf16-storage":
        raise ValueError(f"model.quantize: expected one of {', '.join(QUANTIZE)}, got {mode!r}")
    seen: set[int] = set()
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            m.__class__ = _StoredLinear if type(m) is torch.nn.Linear else m.__class__
        elif isinstance(m, torch.nn.Embedding):
            m.register_forward_hook(_embedding_to_fp32)
        else:
            continue
        if type(m) is torch.nn.Embedding or isinstance(m, _StoredLinear):
            w = m.weight
            if id(w) not in seen:  # a tied weight is one parameter: converted once
                seen.add(id(w))
                w.data = w.data.to(torch.bfloat16)
            w.requires_grad_(False)
    for p in model.parameters():
        if id(p) not in seen and p.is_floating_point() and p.dtype != compute_dtype:
            p.data = p.data.to(compute_dtype)
    return model
