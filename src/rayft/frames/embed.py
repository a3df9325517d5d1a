"""open_clip image/text embedding: a callable class that loads the model once (actor pool).

No Ray here: ``ClipEmbedder`` is handed to ``Dataset.map_batches`` by frames/run.py, and
called directly by the DataLoader baseline in benchmarks/frames_embed_bench.py.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from ..config import from_dict
from .config import ModelSection


@dataclass
class LoadedClip:
    model: object
    image_size: int
    mean: tuple
    std: tuple
    dim: int
    device: str
    dtype: object


def load_clip(cfg: ModelSection, device: str = "cpu") -> LoadedClip:
    """Build the open_clip model named in ``cfg``: random weights seeded by ``cfg.seed`` when
    ``cfg.pretrained`` is empty (offline), else the pretrained tag/checkpoint via open_clip."""
    import open_clip
    import torch

    torch.manual_seed(cfg.seed)  # same random weights in every actor and in the export step
    precision = cfg.precision if device.startswith("cuda") else "fp32"
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))  # open_clip logs each load step on the root logger
    try:
        model = open_clip.create_model(
            cfg.name, pretrained=cfg.pretrained or None, precision=precision, device=device,
            force_image_size=cfg.image_size or None, cache_dir=cfg.cache_dir or None)
    finally:
        root.setLevel(level)
    model.eval()
    pp = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else int(size)
    dim = int(getattr(model.visual, "output_dim", 0) or model.text_projection.shape[-1])
    dtype = next(model.parameters()).dtype
    return LoadedClip(model, size, tuple(pp.get("mean", open_clip.OPENAI_DATASET_MEAN)),
                      tuple(pp.get("std", open_clip.OPENAI_DATASET_STD)), dim, device, dtype)


def check_model(cfg: ModelSection) -> str:
    """Fail fast, on the driver, with a clear message for an unknown model or weights that
    cannot be fetched (actors would otherwise fail one by one inside Ray). Downloads tagged
    weights into the open_clip cache once, so local actors load them from disk. Returns a
    warning to print ('' if none)."""
    import open_clip

    from ..config import ConfigError

    if cfg.name.startswith(("hf-hub:", "local-dir:")):
        return ""  # open_clip resolves config and weights from the hub/folder itself
    if not open_clip.get_model_config(cfg.name):
        raise ConfigError(f"model.name: unknown open_clip model {cfg.name!r} (see open_clip.list_models())")
    if not cfg.pretrained:
        return (f"model.pretrained is empty: {cfg.name} has RANDOM weights (seed {cfg.seed}); fine for tests, "
                "but clusters of such embeddings do not find characters. Set model.pretrained "
                f"(tags for {cfg.name}: {', '.join(open_clip.list_pretrained_tags_by_model(cfg.name)) or 'none'})")
    tag_cfg = open_clip.get_pretrained_cfg(cfg.name, cfg.pretrained)
    if tag_cfg:
        try:
            open_clip.download_pretrained(tag_cfg, cache_dir=cfg.cache_dir or None)
        except Exception as e:  # noqa: BLE001 - any network/hub error becomes one clear message
            raise ConfigError(f"model.pretrained={cfg.pretrained!r}: cannot fetch weights for {cfg.name}: "
                              f"{type(e).__name__}: {e}. Check network/hub access, or set model.pretrained "
                              "to a local checkpoint file (or model.cache_dir to a folder that has it)") from None
        return ""
    if os.path.isfile(cfg.pretrained):
        return ""
    tags = open_clip.list_pretrained_tags_by_model(cfg.name)
    raise ConfigError(f"model.pretrained={cfg.pretrained!r} is neither a pretrained tag of {cfg.name} "
                      f"(known: {', '.join(tags) or 'none'}) nor an existing checkpoint file")


def model_image_size(cfg: ModelSection) -> int:
    """The input size the vision tower expects, without building the model."""
    if cfg.image_size:
        return cfg.image_size
    import open_clip

    mc = open_clip.get_model_config(cfg.name) or {}
    s = (mc.get("vision_cfg") or {}).get("image_size", 224)
    return s[0] if isinstance(s, (tuple, list)) else int(s)


def encode_images(clip: LoadedClip, images: np.ndarray) -> np.ndarray:
    """uint8 (n, s, s, 3) -> L2-normalised float32 (n, dim)."""
    import torch

    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(images)).to(clip.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(clip.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(clip.std, device=x.device).view(1, 3, 1, 1)
        x = ((x - mean) / std).to(clip.dtype)
        e = clip.model.encode_image(x).float()
        e = torch.nn.functional.normalize(e, dim=-1)
    return e.cpu().numpy().astype(np.float32)


def encode_texts(clip: LoadedClip, name: str, texts: list[str]) -> np.ndarray:
    """Prompts -> L2-normalised float32 (n, dim) from the same model's text tower."""
    import open_clip
    import torch

    tok = open_clip.get_tokenizer(name)
    with torch.inference_mode():
        e = clip.model.encode_text(tok(texts).to(clip.device)).float()
        e = torch.nn.functional.normalize(e, dim=-1)
    return e.cpu().numpy().astype(np.float32)


def torch_threads(threads: int, actors: int = 1) -> int:
    """Intra-op threads for a CPU actor: explicit, else this node's cores shared by the actors."""
    return threads if threads > 0 else max(1, (os.cpu_count() or 1) // max(1, actors))


class ClipEmbedder:
    """Ray Data actor: ``batch`` (from decode_batch) -> the same rows with an ``embedding``
    column (zeros for rejected rows) and without the decoded pixels."""

    KEEP = ("path", "episode", "frame_index", "width", "height", "converted", "reject")

    def __init__(self, model_cfg: dict, device: str = "cpu", threads: int = 0, actors: int = 1):
        import torch

        cfg = from_dict(ModelSection, model_cfg)
        if device == "cpu":
            torch.set_num_threads(torch_threads(threads, actors))
        self.clip = load_clip(cfg, device)

    def __call__(self, batch: dict) -> dict:
        reject = np.asarray(batch["reject"], dtype=object)
        ok = np.array([not r for r in reject], dtype=bool)
        emb = np.zeros((len(reject), self.clip.dim), dtype=np.float32)
        if ok.any():
            emb[ok] = encode_images(self.clip, np.asarray(batch["image"])[ok])
        out = {k: batch[k] for k in self.KEEP if k in batch}
        out["embedding"] = emb
        return out
