"""The input embedding and output head as vocabulary slices (issue 19 item 3, ``train.vocab_chunks``).

Under ZeRO-3 a parameter is gathered whole on every rank when its module runs, and its gradient
exists whole until it is reduce-scattered. Qwen2.5-0.5B's tied 151,936 x 896 embedding is a
quarter of the model: gathered with its full gradient it is 1.07 GB on every 4 GB worker, and as
the largest parameter it also sizes DeepSpeed's nvme optimizer swap buffers (4 x 4 bytes x its
partition). Here the embedding (and the head, which shares it when tied) becomes ``k`` row
slices, each its own module with its own parameter, so ZeRO-3 gathers, reduces and swaps one
slice at a time: the lookup sums each slice's masked rows, the head concatenates each slice's
logits. Same values and gradients as the whole matrix (tests/test_vocab_chunks.py).

Megatron's VocabParallelEmbedding splits the vocabulary the same way across tensor-parallel
ranks; here every rank runs every slice and ZeRO-3 does the sharding. The model's own saved
artifact (zero_io.save_zero3_artifact) writes the slices back as the one Hugging Face tensor.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class VocabSlice(torch.nn.Module):
    """Rows [lo, lo + rows) of an embedding matrix; one module so ZeRO-3 gathers it alone."""

    def __init__(self, weight: torch.Tensor, lo: int, requires_grad: bool):
        super().__init__()
        self.weight = torch.nn.Parameter(weight, requires_grad=requires_grad)
        self.lo, self.rows = lo, int(weight.shape[0])

    def forward(self, x: torch.Tensor, lookup: bool = False) -> torch.Tensor:
        if not lookup:  # output head: this slice's logits
            return F.linear(x, self.weight)
        idx = x - self.lo
        hit = (idx >= 0) & (idx < self.rows)
        return F.embedding(idx.clamp(0, self.rows - 1), self.weight) * hit.unsqueeze(-1).to(self.weight.dtype)


class VocabChunkedEmbedding(torch.nn.Module):
    """nn.Embedding's lookup over ``slices`` (ids outside a slice contribute zero rows)."""

    def __init__(self, slices: torch.nn.ModuleList, hf_name: str):
        super().__init__()
        self.slices, self.hf_name = slices, hf_name

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = None
        for s in self.slices:  # every slice on every rank: under ZeRO-3 each call is a collective
            e = s(input_ids, lookup=True)
            out = e if out is None else out + e
        return out


class VocabChunkedHead(torch.nn.Module):
    """The output head (bias-free linear) as the concatenation of each slice's logits. When the
    weights are tied the slices belong to the embedding and are only referenced here: ZeRO-3
    registers its hooks by walking children, and a module reached twice would get them twice."""

    def __init__(self, slices: torch.nn.ModuleList, hf_name: str, owned: bool):
        super().__init__()
        self.hf_name = hf_name
        if owned:
            self.slices = slices
        else:
            object.__setattr__(self, "_shared", slices)

    @property
    def parts(self) -> torch.nn.ModuleList:
        return self.slices if "slices" in self._modules else self._shared

    @property
    def weight(self) -> torch.nn.Parameter:  # chunked_loss checks the head's ZeRO-3 status on it
        return self.parts[0].weight

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.cat([s(h) for s in self.parts], dim=-1)


def _slices(weight: torch.nn.Parameter, k: int) -> torch.nn.ModuleList:
    """k row slices of ``weight`` (gathered first if ZeRO-3 has partitioned it; identical on
    every rank). The new parameters are whole; deepspeed.initialize partitions them."""
    import contextlib

    gather = contextlib.nullcontext()
    if hasattr(weight, "ds_id"):
        import deepspeed
        gather = deepspeed.zero.GatheredParameters([weight], modifier_rank=None)
    with gather, torch.no_grad():
        rows = weight.shape[0]
        step = -(-rows // k)
        return torch.nn.ModuleList(
            VocabSlice(weight.data[lo:lo + step].detach().clone(), lo, weight.requires_grad)
            for lo in range(0, rows, step))


def chunk_vocab(model: torch.nn.Module, k: int) -> None:
    """Replace the causal LM's input embedding and output head with ``k`` vocabulary slices, in
    place, before deepspeed.initialize. Tied weights stay tied (one set of slices)."""
    from .chunked_loss import _causal_lm

    lm = _causal_lm(model)
    emb, head = lm.get_input_embeddings(), lm.get_output_embeddings()
    if not isinstance(emb, torch.nn.Embedding):
        raise RuntimeError(f"train.vocab_chunks: the input embedding is {type(emb).__name__}, not nn.Embedding")
    if head is not None and (not isinstance(head, torch.nn.Linear) or head.bias is not None):
        raise RuntimeError("train.vocab_chunks: the output head must be a bias-free nn.Linear")
    names = {m: n for n, m in lm.named_modules()}
    tied = head is not None and head.weight is emb.weight
    emb_slices = _slices(emb.weight, k)
    new_emb = VocabChunkedEmbedding(emb_slices, f"{names[emb]}.weight")
    new_head = None
    if head is not None:
        head_name = f"{names[head]}.weight"
        new_head = VocabChunkedHead(emb_slices if tied else _slices(head.weight, k), head_name, owned=not tied)
    lm.set_input_embeddings(new_emb)
    if new_head is not None:
        lm.set_output_embeddings(new_head)


def artifact_layout(module: torch.nn.Module) -> dict[str, tuple[str, int, int]]:
    """parameter name -> (Hugging Face tensor name, first row, total rows) for every vocabulary
    slice in ``module``: how a saved artifact writes them back as the one original tensor."""
    out = {}
    for mname, mod in module.named_modules():
        if isinstance(mod, (VocabChunkedEmbedding, VocabChunkedHead)) and "slices" in mod._modules:
            total = sum(s.rows for s in mod.slices)
            for i, s in enumerate(mod.slices):
                out[f"{mname}.slices.{i}.weight"] = (_hf_name(mname, mod.hf_name), s.lo, total)
    return out


def _hf_name(module_name: str, hf_name: str) -> str:
    """The original tensor's name as named_parameters of ``module`` spells it: hf_name was
    recorded relative to the causal LM, which a peft wrapper nests deeper."""
    tail = hf_name.rsplit(".", 1)[0]  # e.g. model.embed_tokens
    return module_name[: len(module_name) - len(tail)] + hf_name if module_name.endswith(tail) else hf_name
