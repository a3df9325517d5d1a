"""DeepSpeed ZeRO-2/3 engine and its checkpoints (safetensors; nothing is pickled).

Checkpoint layout (added to the usual state.json / adapter|model / rng files)::

    zero/rank{R}-{K}.safetensors   fp32 master weights + AdamW moments, FULL tensors keyed
                                   "<param name>::fp32|exp_avg|exp_avg_sq"; parameter i is
                                   written by rank i % world, K counts files of ~256 MB

Every rank writes its share (``safe_get_full_*`` gathers each tensor, its owner keeps it),
and every tensor is whole, so the same checkpoint restores on any worker count and under
zero2 or zero3 (``safe_set_full_*`` takes each rank's slice). DeepSpeed's own
``save_checkpoint`` pickles and is tied to the world size, hence not used.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import TrainConfig
from .build import build_model, make_optimizer
from .zero_io import SHARD_BYTES

MOMENTS = ("exp_avg", "exp_avg_sq")


def _skip_shm_comm_build() -> None:
    """DeepSpeed compiles a shared-memory all-reduce op on CPU at init (~60 s, plus buffers);
    it only serves inference all-reduce, never training. Its op table is a module-level dict
    whose edits persist (see deepspeed/ops/__init__.py), so mark the op unavailable."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def _gloo_allgather_in_place() -> None:
    """Make DeepSpeed's all-gathers on gloo (CPU workers) cost no more than their output.

    gloo's all_gather / all_gather_into_tensor stage the result in a temporary as large as the
    output before copying it out, so every ZeRO-3 parameter fetch transiently holds the full
    parameter twice (measured: gathering a 545 MB tensor on 2 ranks raised peak RSS by 1.09 GB,
    not 0.55). For the tied 152k-vocab embedding of a Qwen2.5 model that is +0.55 GB on every
    forward, backward prefetch and weight-init gather. Instead: write this rank's partition
    into its slot of the output, zero the other slots and all-reduce the output in place
    (exact: x + 0 == x; gloo's in-place all-reduce needs no output-sized buffer). Any other
    backend or device keeps DeepSpeed's own path. Patched on the class (idempotent)."""
    from deepspeed.comm.torch import TorchBackend

    orig = TorchBackend.all_gather_into_tensor
    if getattr(orig, "_rayft_in_place", False):
        return

    def all_gather_into_tensor(self, output_tensor, input_tensor, group=None, async_op=False):
        import torch.distributed as tdist

        if (output_tensor.device.type != "cpu" or not output_tensor.is_contiguous()
                or tdist.get_backend(group) != "gloo"):
            return orig(self, output_tensor, input_tensor, group=group, async_op=async_op)
        world, rank, n = tdist.get_world_size(group), tdist.get_rank(group), input_tensor.numel()
        out = output_tensor.view(-1)
        if out.numel() != world * n:
            return orig(self, output_tensor, input_tensor, group=group, async_op=async_op)
        mine = out.narrow(0, rank * n, n)
        if mine.data_ptr() != input_tensor.data_ptr():  # DeepSpeed often passes the slot itself
            mine.copy_(input_tensor.reshape(-1))
        if rank:
            out.narrow(0, 0, rank * n).zero_()
        if rank + 1 < world:
            out.narrow(0, (rank + 1) * n, (world - rank - 1) * n).zero_()
        return tdist.all_reduce(out, group=group, async_op=async_op)

    all_gather_into_tensor._rayft_in_place = True
    TorchBackend.all_gather_into_tensor = all_gather_into_tensor


class ZeroEngine:
    """DeepSpeed engine over the model; optimizer = torch AdamW, schedule = build.lr_schedule
    (stepped here, not by DeepSpeed). Implements engine.Engine."""

    def __init__(self, cfg: TrainConfig, source: str, tok, world: int, ds_config: dict):
        import deepspeed

        from ..models.load import is_tiny

        _skip_shm_comm_build()
        _gloo_allgather_in_place()
        self.cfg, self.tok, self.world = cfg, tok, world
        self.stage = int(ds_config["zero_optimization"]["stage"])
        self.lockstep_eval = self.stage == 3
        self._hf_ds = None
        # Wrap Ray Train's process group now: HfDeepSpeedConfig below reads the world size from
        # deepspeed.comm, and would see 1 (and fail the batch-size check) before this.
        import torch.distributed as tdist
        backend = tdist.get_backend() if tdist.is_initialized() else ("nccl" if torch.cuda.is_available() else "gloo")
        deepspeed.init_distributed(dist_backend=backend, dist_init_required=False)
        if self.stage == 3 and not is_tiny(source):
            # Must exist (and stay referenced) BEFORE the model is built: transformers then
            # builds it under deepspeed.zero.Init, so no rank ever holds the whole model.
            # Tiny presets are built whole so their seeded weights match the ddp path's.
            from transformers.integrations.deepspeed import HfDeepSpeedConfig
            self._hf_ds = HfDeepSpeedConfig(ds_config)
        model = build_model(cfg, source, tok)
        if cfg.train.vocab_chunks:  # before initialize: ZeRO-3 partitions each slice on its own
            from .vocab_chunks import chunk_vocab
            chunk_vocab(model, cfg.train.vocab_chunks)
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = [p for p in model.parameters() if p.requires_grad]
        opt, self.sched = make_optimizer(cfg, params)
        wrapped = model
        if cfg.train.loss_chunk:  # the engine's module computes the chunked loss (chunked_loss.py);
            from .chunked_loss import ChunkedLossLM  # ZeRO-3 gathers the head per chunk call
            wrapped = ChunkedLossLM(model, cfg.train.loss_chunk)
        self.engine, self.zopt, _, _ = deepspeed.initialize(model=wrapped, optimizer=opt, config=ds_config,
                                                            dist_init_required=False)
        self.basic = opt
        # as in DDPEngine: the causal LM itself (the engine's module, or inside ChunkedLossLM)
        self.unwrapped = self.eval_model = model
        self.model = self.engine.module

    def wrap(self, prepare_model) -> None:  # DeepSpeed already placed and wrapped the model
        return None

    def micro_step(self, batch: dict, index: int, accum: int) -> float:
        out = self.engine(**batch)
        self.engine.backward(out.loss)  # DeepSpeed divides by gradient_accumulation_steps
        self.engine.step()  # optimizer step (with clipping) only at the accumulation boundary
        return out.loss.item()

    def step(self) -> None:
        self.sched.step()

    def lr(self) -> float:
        return self.basic.param_groups[0]["lr"]

    def _trainable(self):
        named = dict(self.unwrapped.named_parameters())
        return [(n, named[n]) for n in self.names]

    # ---- checkpoints -------------------------------------------------------------------
    def save(self, directory: Path, rank: int, world: int, state: dict) -> None:
        """Collective: every rank must call it at the same step."""
        from .checkpoint import STATE

        self._save_artifact(directory, rank)
        self._save_shards(directory / "zero", rank, world)
        if rank == 0:
            adam_step = max((float(st["step"]) for st in self.basic.state.values() if "step" in st), default=0.0)
            state = dict(state, zero={"stage": self.stage, "adam_step": adam_step, "layout": "full-tensors-v1"},
                         scheduler=self.sched.state_dict())
            (directory / STATE).write_text(json.dumps(state, indent=2, default=str))

    def _nvme(self) -> bool:
        """ZeRO-3 with the optimizer states swapped to nvme (ZeRO-Infinity)."""
        return self.stage == 3 and getattr(self.zopt, "swap_optimizer", False)

    def _by_subgroup(self, write: bool):
        """(index, name, param, {key: this rank's slice of its fp32 weight / moment}) for every
        trainable parameter, with nvme optimizer offload under ZeRO-3.

        DeepSpeed's safe_get_full_* / safe_set_full_* swap the parameter's whole optimizer
        sub-group in from nvme (and release it, or write it back) for every parameter and key:
        full 0.5B, 4 workers, ~870 swap-ins of ~240 MB, a final checkpoint still unfinished after
        12 min and a restore of ~30 min. Here each sub-group is swapped in once, all of its
        parameters are yielded, and when it is left it is released, or written back to nvme if
        ``write`` (the slices are set_full_hp_param's own: grad_position's offset and length)."""
        z, group = self.zopt, None

        def leave(g):
            if g is not None and z._swappable_optimizer_subgroup(g):
                if write:
                    z._optimizer_states_and_gradient_swap_out(g)
                else:
                    z._release_swap_buffers(g)

        try:
            for i, (name, p) in enumerate(self._trainable()):
                g, offset, n = z.grad_position[z.get_param_id(p)]
                if g != group:
                    leave(group)
                    group = g
                    if z._swappable_optimizer_subgroup(g):
                        z._optimizer_states_and_gradient_swap_in(g)
                flat = z.fp32_partitioned_groups_flat[g]
                yield i, name, p, {key: (flat if key == "fp32" else z.optimizer.state[flat][key]).data.narrow(0, offset, n)
                                   for key in ("fp32", *MOMENTS)}
        finally:
            leave(group)

    def _full_states(self):
        """(index, name, key, full tensor) for every trainable parameter and key, in the same
        order on every rank: each tensor is a collective (all-gather / all-reduce). With nvme
        optimizer offload, read one sub-group at a time (_by_subgroup) and gathered the way
        get_full_hp_param does."""
        from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

        if self._nvme():
            for i, name, p, parts in self._by_subgroup(write=False):
                for key in ("fp32", *MOMENTS):
                    yield i, name, key, self.zopt._fp32_state_allgather(p, parts[key])
            return
        for i, (name, p) in enumerate(self._trainable()):
            for key in ("fp32", *MOMENTS):
                yield i, name, key, (safe_get_full_fp32_param(p) if key == "fp32"
                                     else safe_get_full_optimizer_state(p, key))

    def _save_shards(self, out: Path, rank: int, world: int) -> None:
        out.mkdir(parents=True, exist_ok=True)
        buf, size, k, last = {}, 0, 0, None
        for i, name, key, t in self._full_states():
            if i != last and size >= SHARD_BYTES:  # a parameter's tensors stay in one file
                save_file(buf, str(out / f"rank{rank}-{k:03d}.safetensors"))
                buf, size, k = {}, 0, k + 1
            last = i
            if i % world == rank:
                buf[f"{name}::{key}"] = t.detach().to("cpu", torch.float32).contiguous()
                size += t.numel() * 4
            del t
        if buf or k == 0:
            save_file(buf, str(out / f"rank{rank}-{k:03d}.safetensors"))

    def _save_artifact(self, directory: Path, rank: int) -> None:
        """adapter/ (LoRA) or model/ (full), loadable exactly like the ddp path's."""
        if self.stage == 2:  # parameters are whole on every rank
            if rank == 0:
                from .checkpoint import save_model
                save_model(self.unwrapped, self.tok, directory, self.cfg.train.method)
            return
        from .zero_io import save_zero3_artifact
        save_zero3_artifact(self.unwrapped, self.tok, directory, self.cfg.train.method, rank)

    def _materialize_optimizer_state(self) -> None:
        """AdamW creates its moments lazily at the first step, and ZeRO (with nvme: its swap
        files) only links them then, so there is nothing to load into before that. Take one
        step at lr=0 on a 2-token batch: weights stay bit-identical (the update and the
        decoupled weight decay are both scaled by lr), and everything it touches (weights,
        moments, step count, RNG) is overwritten by the restore that follows."""
        lrs = [g["lr"] for g in self.basic.param_groups]
        for g in self.basic.param_groups:
            g["lr"] = 0.0
        x = torch.tensor([[0, 1]], device=self.engine.device)
        for _ in range(self.engine.gradient_accumulation_steps()):
            out = self.engine(input_ids=x, labels=x)
            self.engine.backward(out.loss)
            self.engine.step()
        for g, lr in zip(self.basic.param_groups, lrs):
            g["lr"] = lr

    def restore(self, directory: Path, rank: int, world: int) -> dict:
        """Load weights + AdamW moments from full tensors (any saved world size / stage)."""
        from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

        from .checkpoint import read_state
        from .zero_io import set_lp_param, tensor_index

        state = read_state(directory)
        if "zero" not in state:
            raise RuntimeError(f"{directory}: checkpoint was written by train.strategy=ddp; resume it with "
                               "ddp (or start a new run name for a DeepSpeed strategy)")
        index = tensor_index(directory / "zero")
        self._materialize_optimizer_state()

        def check(name):
            for key in ("fp32", *MOMENTS):
                if f"{name}::{key}" not in index:
                    raise RuntimeError(f"{directory}: no {key} for parameter {name} (was the checkpoint "
                                       "written with a different train.method, lora config or train.vocab_chunks?)")

        if self._nvme():  # one nvme swap-in and write-back per optimizer sub-group (_by_subgroup)
            for _, name, p, parts in self._by_subgroup(write=True):
                check(name)
                fp32 = index.get(f"{name}::fp32")
                at = parts["fp32"].numel() * self.zopt._get_param_partition_rank(p)
                for key, part in parts.items():  # set_full_hp_param's narrow + copy
                    full = fp32 if key == "fp32" else index.get(f"{name}::{key}")
                    part.copy_(full.flatten().narrow(0, at, part.numel()))
                set_lp_param(p, fp32, self.stage)  # the model's own (possibly bf16) copy
        else:
            for name, p in self._trainable():
                check(name)
                fp32 = index.get(f"{name}::fp32")
                safe_set_full_fp32_param(p, fp32)
                set_lp_param(p, fp32, self.stage)
                for key in MOMENTS:
                    safe_set_full_optimizer_state(p, index.get(f"{name}::{key}"), key)
        if self.stage == 2:
            self.zopt.update_lp_params()  # keep the replicated low-precision copy in step
        for st in self.basic.state.values():
            if "step" in st:
                st["step"] = torch.tensor(float(state["zero"]["adam_step"]), dtype=torch.float32)
        self.sched.load_state_dict(state["scheduler"])
        for g, lr in zip(self.basic.param_groups, self.sched.get_last_lr()):
            g["lr"] = lr  # LambdaLR.load_state_dict restores its counters, not the groups' lr
        return state

