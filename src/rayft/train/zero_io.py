"""ZeRO-3 parameter I/O: gather partitioned weights into normal Hugging Face artifacts,
write the restored values back into the partitions, and read tensors lazily from shards.

Every function that gathers is a collective: all ranks call it with the same parameters
in the same order; only rank 0 writes files.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

#: largest safetensors file rayft writes itself: ZeRO-3 model artifacts here and ZeRO optimizer-state
#: checkpoints (zero.py). Each file is buffered whole in the writing rank's memory first, so it is kept
#: small for 4 GB CPU workers.
SHARD_BYTES = 256 * 2**20


class TensorIndex:
    """Lazy "<name>::<key>" -> tensor over a directory of safetensors files (one open per read,
    so at most one full tensor is in memory at a time)."""

    def __init__(self, files: list[Path]):
        self.where: dict[str, Path] = {}
        for f in files:
            with safe_open(str(f), framework="pt") as h:
                for k in h.keys():
                    self.where[k] = f

    def __contains__(self, key: str) -> bool:
        return key in self.where

    def get(self, key: str) -> torch.Tensor:
        with safe_open(str(self.where[key]), framework="pt") as h:
            return h.get_tensor(key)


def tensor_index(directory: Path) -> TensorIndex:
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise RuntimeError(f"{directory}: no ZeRO shard files in this checkpoint")
    return TensorIndex(files)


def set_lp_param(p, full: torch.Tensor, stage: int) -> None:
    """Write a restored full fp32 value into the model's own copy of a ZeRO-3 parameter
    (rank 0 sets it, GatheredParameters re-partitions it to every rank). Collective.
    Stage 2 keeps whole low-precision copies, refreshed by ``update_lp_params`` instead."""
    if stage != 3:
        return
    import deepspeed
    import torch.distributed as dist

    with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
        if dist.get_rank() == 0:
            p.data.copy_(full.view(p.ds_shape).to(p.dtype))


def _persistent_buffers(module) -> dict[str, torch.Tensor]:
    out = {}
    for mname, mod in module.named_modules():
        for bname, b in mod._buffers.items():
            if b is not None and bname not in mod._non_persistent_buffers_set:
                out[f"{mname}.{bname}" if mname else bname] = b
    return out


def save_zero3_artifact(module, tok, directory: Path, method: str, rank: int) -> None:
    """adapter/ or model/ (+ tokenizer/) from a ZeRO-3 partitioned model, like save_pretrained.

    LoRA: gathers only the adapter's parameters and lets peft write them. Full: gathers one
    parameter at a time into <= 512 MB safetensors shards (HF index layout), so rank 0 never
    holds the whole model."""
    import deepspeed

    if method == "lora":
        params = [p for p in module.parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            if rank == 0:
                module.save_pretrained(str(directory / "adapter"), safe_serialization=True)
    else:
        from .vocab_chunks import artifact_layout

        out = directory / "model"
        # one unit per Hugging Face tensor: a parameter, or the vocabulary slices (train.vocab_chunks)
        # written back as the one embedding/head matrix; tied weights appear once, like save_pretrained
        layout = artifact_layout(module)
        units: dict[str, list] = {}
        for name, p in module.named_parameters():
            units.setdefault(layout[name][0] if name in layout else name, []).append((name, p))
        plan, cur, size = [], [], 0
        for hf, members in units.items():
            nbytes = sum((p.ds_numel if hasattr(p, "ds_numel") else p.numel()) * p.element_size() for _, p in members)
            if cur and size + nbytes > SHARD_BYTES:
                plan.append(cur)
                cur, size = [], 0
            cur.append(hf)
            size += nbytes
        plan.append(cur)
        shard_of = {n: i for i, names in enumerate(plan) for n in names}
        files = (["model.safetensors"] if len(plan) == 1 else
                 [f"model-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))])
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        buf, total, weight_map = {}, 0, {}
        order = list(units)
        for i, hf in enumerate(order):
            for name, p in units[hf]:  # one parameter (one slice) gathered at a time
                with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
                    if rank == 0 and name in layout:
                        _, lo, rows = layout[name]
                        if hf not in buf:
                            buf[hf] = torch.empty((rows, *p.shape[1:]), dtype=p.dtype)
                        buf[hf][lo:lo + p.shape[0]].copy_(p.data.detach())
                    elif rank == 0:
                        buf[hf] = p.data.detach().to("cpu").clone().contiguous()
            last_of_shard = i + 1 == len(order) or shard_of[order[i + 1]] != shard_of[hf]
            if rank == 0 and last_of_shard:
                if shard_of[hf] == len(plan) - 1:
                    buf.update({k: b.detach().cpu().contiguous() for k, b in _persistent_buffers(module).items()})
                f = files[shard_of[hf]]
                save_file(buf, str(out / f), metadata={"format": "pt"})
                for k, t in buf.items():
                    weight_map[k] = f
                    total += t.numel() * t.element_size()
                buf = {}
        if rank == 0:
            if len(plan) > 1:
                (out / "model.safetensors.index.json").write_text(json.dumps(
                    {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
            module.config.save_pretrained(str(out))
            if getattr(module, "generation_config", None) is not None:
                module.generation_config.save_pretrained(str(out))
    if rank == 0:
        tok.save_pretrained(str(directory / "tokenizer"))
