"""Cross-entropy without the batch x seq x vocab logits (issue 19 item 4, ``train.loss_chunk``).

transformers' causal-LM forward computes fp32 logits for every position (4 x 512 x 151,936 x 4 B
= 1.2 GB for a Qwen2.5 batch), and the loss keeps a same-size log-softmax for backward. Here the
decoder's last hidden states are taken instead, only the positions that carry a label (the
response tokens: prompt and padding positions never need logits) are kept, and the output
head + cross-entropy run ``chunk`` positions at a time under activation checkpointing
(torch.utils.checkpoint, non-reentrant): one chunk's logits exist at a time, in forward and
again when backward recomputes them. Same loss as transformers' ForCausalLMLoss (mean over
labelled tokens, ignore_index -100, logits upcast to fp32).

No library here does this on CPU: Liger-Kernel's fused linear cross-entropy and Apple's
cut-cross-entropy are Triton (GPU) kernels; on GPUs they are the better choice.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def _causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The *ForCausalLM module inside a peft wrapper (LoRA layers stay injected in it)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _ce_sum(head: torch.nn.Module, h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(h).float(), y, reduction="sum")


def _chunks(head: torch.nn.Module, rows: int, chunk: int) -> int:
    """How many head calls this batch makes. Under ZeRO-3 each call gathers the head's weight,
    a collective, so every rank makes as many as the rank with the most labelled positions
    (the extra calls are on empty chunks); elsewhere just this rank's own."""
    n = -(-rows // chunk)
    if hasattr(head.weight, "ds_id") and torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor([n], dtype=torch.int64, device=head.weight.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        n = int(t.item())
    return n


def labelled_ce(model: torch.nn.Module, input_ids: torch.Tensor, labels: torch.Tensor, chunk: int,
                attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of token cross-entropies, number of labelled tokens) for a causal LM batch, computed
    ``chunk`` labelled positions at a time. Gradients flow to the decoder and the head."""
    lm = _causal_lm(model)
    kw = {"attention_mask": attention_mask} if attention_mask is not None else {}
    if position_ids is not None:
        kw["position_ids"] = position_ids
    hidden = lm.get_decoder()(input_ids=input_ids, use_cache=False, **kw).last_hidden_state
    y = labels[:, 1:].reshape(-1)
    keep = (y != -100).nonzero().squeeze(1)
    h = hidden[:, :-1].reshape(-1, hidden.size(-1)).index_select(0, keep)
    y = y.index_select(0, keep)
    head = lm.get_output_embeddings()
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, _chunks(head, h.size(0), chunk) * chunk, chunk):
        hi, yi = h[i:i + chunk], y[i:i + chunk]  # past this rank's own rows: empty (loss 0)
        if torch.is_grad_enabled():
            total = total + checkpoint(_ce_sum, head, hi, yi, use_reentrant=False)
        else:
            total = total + _ce_sum(head, hi, yi)
    return total, torch.tensor(float(y.numel()))


class ChunkedLossLM(torch.nn.Module):
    """Wraps a causal LM (peft or plain) so ``forward(**batch).loss`` is :func:`labelled_ce`'s
    mean; DDP wraps this module (same parameters, same gradients)."""

    def __init__(self, model: torch.nn.Module, chunk: int):
        super().__init__()
        self.lm, self.chunk = model, chunk
        ignored = getattr(model, "_ddp_params_and_buffers_to_ignore", None)  # model.quantize's frozen base
        if ignored:
            self._ddp_params_and_buffers_to_ignore = [f"lm.{n}" for n in ignored]

    def forward(self, input_ids, labels, attention_mask=None, position_ids=None, **_):
        total, n = labelled_ce(self.lm, input_ids, labels, self.chunk, attention_mask, position_ids)
        return _Out(total / n.clamp(min=1.0))


class _Out:
    """``.loss`` like a transformers output; a plain ``__dict__`` because DeepSpeed's ZeRO-3
    post-forward hook walks ``vars(output)``."""

    def __init__(self, loss):
        self.loss = loss
