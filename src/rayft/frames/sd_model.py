"""The text-to-image base model `rayft frames train` puts LoRAs on (diffusers).

``train.model`` (CLI alias ``model.name``) is a local diffusers pipeline directory
(``model_index.json``), a hub id, or the ``tiny-sd`` preset: an SD-1.5-shaped pipeline
(UNet2DConditionModel with cross-attention, AutoencoderKL, CLIPTextModel, DDPM/PNDM
schedulers) with random weights built from configs and the byte-level CLIP tokenizer
shipped in ``assets/tiny_clip_tokenizer``. It is saved once under the rayft cache and then
loaded like any local pipeline, so tests and the CPU demo run the real-model code path offline.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..config import ConfigError
from ..models.load import ASSETS, cache_dir

TINY_CLIP_TOKENIZER = ASSETS / "tiny_clip_tokenizer"
TINY_SD = "tiny-sd"


def build_tiny_sd(seed: int = 0):
    """A random-init SD-1.5-class pipeline small enough for a CPU test (64x64 images)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    tok = CLIPTokenizer.from_pretrained(TINY_CLIP_TOKENIZER)
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, sample_size=64)
    te = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id))
    sched_kw = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    # training uses DDPMScheduler.from_config(this config): same betas
    pndm = PNDMScheduler(skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1, **sched_kw)
    return StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=pndm,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def tiny_sd_dir(seed: int = 0) -> Path:
    """The tiny-sd pipeline saved (safetensors) under the rayft cache; built once, atomically."""
    out = cache_dir() / "models" / f"{TINY_SD}-seed{seed}"
    if (out / "model_index.json").exists():
        return out
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build_tiny_sd(seed).save_pretrained(tmp, safe_serialization=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, out)
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def resolve_model(name: str, seed: int = 0) -> str:
    """Driver-side: ``train.model`` -> a local pipeline directory or a hub id workers load."""
    if not name:
        raise ConfigError("train.model (alias model.name): empty; use tiny-sd, a local diffusers "
                          "pipeline directory or a hub id like 'org/name'")
    if name == TINY_SD:
        return str(tiny_sd_dir(seed))
    p = Path(os.path.expanduser(name))
    if p.exists():
        if not (p / "model_index.json").exists():
            raise ConfigError(f"train.model: {p} is not a diffusers pipeline directory (no model_index.json)")
        return str(p.resolve())
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return name
    raise ConfigError(f"train.model: {name!r} is not 'tiny-sd', an existing diffusers pipeline "
                      "directory, or a hub id like 'org/name'")


def load_pipeline(source: str, dtype=None, device: str = "cpu"):
    """The base pipeline (safetensors only) with every weight frozen, on ``device``."""
    import torch
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(source, dtype=dtype or torch.float32, use_safetensors=True,
                                             safety_checker=None, requires_safety_checker=False)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        m = getattr(pipe, name, None)
        if m is not None:
            m.requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def default_resolution(pipe) -> int:
    """The image size the model was trained at: UNet sample size x VAE downscale factor."""
    return int(pipe.unet.config.sample_size) * int(getattr(pipe, "vae_scale_factor", 8))
