"""LoRA files of `rayft frames train`: kohya/A1111 format, diffusers adapter dirs, resume state.

Conversions use diffusers' and peft's own utilities (peft ``get_peft_model_state_dict`` ->
diffusers ``convert_state_dict_to_kohya``), never hand-written key renames. Every file is
safetensors, written to a temp name, fsynced and renamed into place.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def _atomic_save(tensors: dict, path: Path, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def peft_unet_state(unet) -> dict:
    """The UNet's LoRA weights in peft key format (``...to_q.lora_A.weight``)."""
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(unet)


def to_kohya(peft_sd: dict, alpha: float, dtype=torch.float16) -> dict:
    """peft UNet LoRA state -> kohya keys (``lora_unet_*.lora_down.weight``/``lora_up``/``alpha``).

    diffusers' converter writes ``alpha = rank`` (scale 1); rayft trains with
    ``lora_alpha/r``, so the alpha tensors are set to the configured alpha afterwards:
    kohya's scale is alpha/rank too, so A1111/ComfyUI apply the same delta peft trained."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in peft_sd.items()})
    out = {}
    for k, v in kohya.items():
        out[k] = torch.tensor(float(alpha), dtype=dtype) if k.endswith(".alpha") else v.to(dtype)
    return out


def save_kohya(peft_sd: dict, path: Path, alpha: float, rank: int, base_model: str, trigger: str,
               step: int, dtype=torch.float16) -> Path:
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_alpha": str(alpha),
            "ss_base_model_version": "sd_v1", "ss_sd_model_name": base_model, "ss_steps": str(step),
            "ss_tag_frequency": json.dumps({trigger: 1}), "rayft_trigger": trigger}
    return _atomic_save(to_kohya(peft_sd, alpha, dtype), path, meta)


def save_adapter_dir(pipe_cls, unet, directory: Path) -> Path:
    """The diffusers/peft adapter directory (``pytorch_lora_weights.safetensors``) that
    ``pipe.load_lora_weights(directory)`` reads, written by diffusers' own save_lora_weights."""
    import shutil

    from diffusers.utils import convert_state_dict_to_diffusers

    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    # the adapter's peft config (rank, lora_alpha, targets) goes into the file's metadata, as
    # diffusers' own training scripts do; without it load_lora_weights assumes alpha = rank
    meta = unet.peft_config["default"].to_dict()
    meta = json.loads(json.dumps(meta, default=lambda o: sorted(o) if isinstance(o, set) else str(o)))
    pipe_cls.save_lora_weights(save_directory=str(tmp), safe_serialization=True,
                               unet_lora_layers=convert_state_dict_to_diffusers(peft_unet_state(unet)),
                               unet_lora_adapter_metadata=meta)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)
    return directory


def save_resume(path: Path, unet, optimizer: torch.optim.Optimizer, step: int, losses: list[float],
                extra: dict) -> Path:
    """Everything a restarted worker needs to continue exactly: LoRA weights (fp32, peft keys),
    the optimizer's state tensors, the step and the loss history."""
    tensors = {f"lora.{k}": v.float() for k, v in peft_unet_state(unet).items()}
    osd = optimizer.state_dict()
    for idx, st in osd["state"].items():
        for name, t in st.items():
            tensors[f"optim.{idx}.{name}"] = t if torch.is_tensor(t) else torch.tensor(t)
    meta = {"step": str(step), "losses": json.dumps(losses), "param_groups": json.dumps(osd["param_groups"]),
            "extra": json.dumps(extra)}
    return _atomic_save(tensors, path, meta)


def load_resume(path: Path, unet, optimizer: torch.optim.Optimizer) -> tuple[int, list[float], dict]:
    from peft.utils import set_peft_model_state_dict
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    lora = {k[5:]: v for k, v in tensors.items() if k.startswith("lora.")}
    res = set_peft_model_state_dict(unet, lora)
    if getattr(res, "unexpected_keys", None):
        raise ValueError(f"{path}: LoRA keys do not match the model: {res.unexpected_keys[:3]}")
    state: dict = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    return int(meta["step"]), json.loads(meta["losses"]), json.loads(meta.get("extra", "{}"))
