"""Directory checkpoints: safetensors + state.json. Nothing here is ever unpickled.

Layout of one checkpoint directory::

    state.json                 step, config, metrics, scheduler state, data position
    adapter/                   peft adapter (adapter_config.json + adapter_model.safetensors)
      or model/                full fine-tune: model.safetensors + config.json
    tokenizer/                 tokenizer files
    optimizer.safetensors      AdamW state tensors (structure in state.json)
    rng_rank{R}.safetensors    each worker's torch RNG state (dropout) for exact resume
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

STATE = "state.json"


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v.detach().contiguous().cpu()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict = {}
    for key, v in tensors.items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    for key, v in meta.get("scalars", {}).items():
        pid, k = key.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_rng(path: Path) -> None:
    save_file({"torch": torch.get_rng_state()}, str(path))


def load_rng(path: Path) -> bool:
    if not path.exists():
        return False
    torch.set_rng_state(load_file(str(path))["torch"])
    return True


def save_model(model, tokenizer, directory: Path, method: str) -> None:
    sub = directory / ("adapter" if method == "lora" else "model")
    model.save_pretrained(str(sub), safe_serialization=True)
    tokenizer.save_pretrained(str(directory / "tokenizer"))


def save_training_state(directory: Path, opt, scheduler, state: dict) -> None:
    tensors, meta = optimizer_to_flat(opt)
    save_file(tensors, str(directory / "optimizer.safetensors"))
    state = dict(state, optimizer=meta, scheduler=scheduler.state_dict())
    (directory / STATE).write_text(json.dumps(state, indent=2, default=str))


def read_state(directory: Path) -> dict:
    """A checkpoint's state.json; a corrupt one is a one-line ConfigError naming the file."""
    from ..config import ConfigError

    path = Path(directory) / STATE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        msg = (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"{path}: corrupt checkpoint state: expected a JSON object with 'step' ({msg}); "
                          f"move {path.parent.name} aside to resume from the checkpoint before it") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ConfigError(f"{path}: corrupt checkpoint state: expected a JSON object with an integer 'step'; "
                          f"move {path.parent.name} aside to resume from the checkpoint before it")
    return state


def load_training_state(directory: Path, opt, scheduler) -> dict:
    state = read_state(directory)
    tensors = load_file(str(Path(directory) / "optimizer.safetensors"))
    optimizer_from_flat(opt, tensors, state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state


def load_trainable_weights(model, directory: Path, method: str) -> None:
    """Load the checkpoint's weights into an (unwrapped) model built the same way."""
    if method == "lora":
        from peft import set_peft_model_state_dict
        sd = load_file(str(Path(directory) / "adapter" / "adapter_model.safetensors"))
        res = set_peft_model_state_dict(model, sd)
        unexpected = getattr(res, "unexpected_keys", [])
        if unexpected:
            raise RuntimeError(f"checkpoint adapter has unexpected keys: {unexpected[:3]}")
    else:
        import glob
        sd = {}
        for f in sorted(glob.glob(str(Path(directory) / "model" / "*.safetensors"))):
            sd.update(load_file(f))
        missing, unexpected = model.load_state_dict(sd, strict=False)
        real_missing = [k for k in missing if "lm_head" not in k]  # tied embeddings are not saved twice
        if real_missing or unexpected:
            raise RuntimeError(f"checkpoint weights do not match the model: missing {real_missing[:3]}, "
                               f"unexpected {unexpected[:3]}")


def latest_checkpoint_dir(run_dir: Path) -> Path | None:
    """The newest checkpoint Ray Train kept under ``run_dir/checkpoints`` (None before the first)."""
    cands = sorted((Path(run_dir) / "checkpoints").glob("step_*/" + STATE))
    return cands[-1].parent if cands else None
