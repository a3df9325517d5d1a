"""The ``train`` section of FramesConfig: every key `rayft frames train` reads.

Defaults are the users' (W4): rank/network_dim 32, alpha 32, lr 1e-4, 2000 steps, batch 2,
resolution from the model. On the command line ``input=``, ``output=`` and ``model.name=`` are
short aliases for ``train.input``, ``train.output`` and ``train.model`` (the top-level
``model`` section stays the open_clip model of embed/export).
"""
from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from ..config import ConfigError, LocalPath, Section, opt


class TrainSection(Section):
    input: str = opt("", "a directory of cluster_XXX/ folders, each with images and same-name .txt "
                     "captions (what `rayft frames export` writes, or any folder of that shape)")
    output: LocalPath = opt("", "models directory: <output>/cluster_XXX/ (final kohya .safetensors, step "
                      "checkpoints, adapter/, loss.png), lora_tests/, pipeline_results.json")
    model: str = opt("stable-diffusion-v1-5/stable-diffusion-v1-5",
                     "diffusers text-to-image pipeline: a local directory (model_index.json), a hub id, "
                     "or tiny-sd (random-init SD-1.5-shaped pipeline built from configs; tests, offline demo)")
    model_seed: int = opt(0, "seed of the tiny-sd preset's random weights")
    extensions: list[str] = opt(["png", "jpg", "jpeg", "webp"], "image file extensions (case-insensitive)")
    min_images: int = opt(25, "characters with fewer usable image/caption pairs are skipped (recorded)", ge=1)
    max_images: int = opt(1000, "use at most this many image/caption pairs per character, evenly "
                          "spaced over the folder (2000 steps x batch 2 see 4000 samples); 0 = all", ge=0)
    only: list[str] = opt([], "train only these characters, e.g. [cluster_003, cluster_007] (empty = all)")
    max_characters: int = opt(0, "train at most this many unfinished characters this run (0 = all)", ge=0)
    trigger: str = opt("", "trigger word for sample prompts; empty = the most common first "
                       "comma-separated caption field of each character (export writes it first)")
    rank: int = opt(32, "LoRA rank (kohya network_dim)", ge=1)
    alpha: float = opt(32.0, "LoRA alpha (kohya network_alpha); the update is scaled by alpha/rank", gt=0)
    target_modules: list[str] = opt(["to_k", "to_q", "to_v", "to_out.0"],
                                    "UNet modules that get LoRA layers (attention projections)", min_length=1)
    lr: float = opt(1e-4, "AdamW learning rate (constant)", gt=0)
    weight_decay: float = opt(1e-2, "AdamW weight decay", ge=0)
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0 = off)", ge=0)
    max_steps: int = opt(2000, "optimizer steps per character", ge=1)
    batch_size: int = opt(2, "images per step", ge=1)
    resolution: int = opt(0, "square training size in pixels (images are resized on the short side "
                          "and centre-cropped); 0 = the model's own (UNet sample size x VAE factor)", ge=0)
    precision: Literal["auto", "fp32", "fp16", "bf16"] = opt(
        "auto", "frozen weights' dtype on GPU (LoRA weights train in fp32); auto = bf16 where "
        "supported else fp16; CPU always runs fp32")
    seed: int = opt(0, "seed of the LoRA init, batch order and noise (each step derives its own, so "
                    "a resumed run draws what the uninterrupted run would have)")
    save_every: int = opt(500, "write cluster_XXX-stepNNNNNN.safetensors (+ resume state) every this "
                          "many steps (0 = only the final file)", ge=0)
    log_every: int = opt(10, "report loss to Ray Tune every this many steps", ge=1)
    max_image_pixels: int = opt(50_000_000, "reject images with more pixels than this (header checked "
                                "before decoding)", ge=1)
    cpus_per_character: float = opt(1.0, "CPUs reserved per character's trial (also its torch threads on CPU)", gt=0)
    gpus_per_character: float = opt(-1.0, "GPUs per character; -1 = 1 when the Ray cluster has GPUs, else 0")
    memory_gb: float = opt(0.0, "memory reserved per character (Ray packs no more trials than fit; "
                           "SD 1.5 in fp32 on CPU holds ~5 GB); 0 = reserve nothing", ge=0)
    concurrency: int = opt(0, "characters training at once; 0 = as many as the cluster's resources fit", ge=0)
    retries: int = opt(2, "restarts of a character whose worker died (killed, node lost); it resumes "
                       "from its last checkpoint. Errors inside training (bad images, NaN, OOM) "
                       "are recorded as failed, not retried", ge=0)
    sample_prompts: list[str] = opt(["{trigger}", "{trigger}, full body", "{trigger}, close-up"],
                                    "prompts for the test images ({trigger} = the character's trigger)")
    sample_seeds: list[int] = opt([0, 1], "fixed seeds: each prompt x seed is drawn by the base model "
                                  "and with the LoRA")
    sample_steps: int = opt(30, "denoising steps per test image", ge=0)
    guidance_scale: float = opt(7.5, "classifier-free guidance of the test images")
    samples_dir: LocalPath = opt("", "where lora_tests/cluster_XXX/ go; empty = <output>/lora_tests")

    @model_validator(mode="after")
    def _resolution(self):
        if self.resolution and self.resolution % 8:
            raise ConfigError(f"train.resolution: must be a multiple of 8, got {self.resolution}")
        return self
