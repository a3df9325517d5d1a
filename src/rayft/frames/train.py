"""`rayft frames train`: one image LoRA per character folder, every character a Ray Tune trial.

Input: ``train.input`` holds ``cluster_XXX/`` folders (any non-hidden sub-folder), each with
images and same-name ``.txt`` captions. Per character the worker trains a peft LoRA on the UNet
attention projections of a diffusers text-to-image pipeline (noise-prediction MSE, DDPM noise
schedule, latents and caption embeddings computed once: the VAE and text encoder are frozen).

Output layout (``train.output``)::

    cluster_000/cluster_000.safetensors           final LoRA, kohya/A1111 keys (ComfyUI, A1111 load it)
    cluster_000/cluster_000-step000500.safetensors  step checkpoints, same format
    cluster_000/adapter/                          diffusers/peft adapter (pipe.load_lora_weights(dir))
    cluster_000/loss.png, status.json             loss curve; the character's result
    cluster_000/_resume/step000500.safetensors    LoRA + AdamW state: a restarted worker continues here
    lora_tests/cluster_000/grid.png               base model (top) vs LoRA (bottom), same prompts/seeds
    pipeline_results.json                         every character: status done|failed, steps, loss, time, error

Scheduling: one Tune trial per character (``tune.with_resources``: CPUs/GPU/memory per character,
so the cluster runs as many at once as fit); an error inside training (unreadable images, NaN,
OOM) is caught in the trial and recorded as ``failed`` while the others go on; a worker that
dies (killed, node lost) is restarted by Tune (``train.retries``) and resumes from its last
checkpoint. A rerun skips characters whose status is ``done`` and resumes the rest.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

from .. import _env
from ..config import ConfigError, to_dict
from ..storage import atomic_write_json

RESULTS = "pipeline_results.json"


class CharacterError(RuntimeError):
    """A character that cannot be trained (unusable images, NaN loss...): recorded, not retried."""


# --------------------------------------------------------------------------------------
# input


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def find_pairs(folder: Path, extensions: list[str]) -> tuple[list[tuple[str, str]], int]:
    """(image path, caption path) pairs in ``folder`` and the count of images without a caption."""
    exts = {"." + e.lower().lstrip(".") for e in extensions}
    pairs, missing = [], 0
    for f in sorted(os.listdir(folder), key=_natural_key):
        p = folder / f
        if f.startswith(".") or p.suffix.lower() not in exts or not p.is_file():
            continue
        cap = p.with_suffix(".txt")
        if cap.is_file():
            pairs.append((str(p), str(cap)))
        else:
            missing += 1
    return pairs, missing


def discover(cfg) -> tuple[dict[str, list[tuple[str, str]]], dict[str, str]]:
    """{character: pairs} with at least ``train.min_images`` pairs, and {character: why skipped}."""
    t = cfg.train
    root = Path(t.input)
    if not t.input or not root.is_dir():
        raise ConfigError(f"train.input (alias input=): not a directory: {t.input!r}")
    chars, skipped = {}, {}
    for d in sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "_"))),
                    key=lambda d: _natural_key(d.name)):
        try:
            pairs, missing = find_pairs(d, t.extensions)
        except OSError as e:
            skipped[d.name] = f"cannot list: {e.strerror}"
            continue
        if not pairs and not missing:
            continue  # no images at all: not a character folder (images without captions are listed)
        if len(pairs) < t.min_images:
            skipped[d.name] = (f"{len(pairs)} image/caption pairs < train.min_images={t.min_images}"
                               + (f" ({missing} images without a .txt caption)" if missing else ""))
        else:
            chars[d.name] = pairs
    if not chars and not skipped:
        raise ConfigError(f"train.input: no character folders in {root}")
    return chars, skipped


def detect_trigger(captions: list[str]) -> str:
    heads = Counter(c.split(",")[0].strip() for c in captions if c.strip())
    return heads.most_common(1)[0][0] if heads else ""


def load_images(pairs, resolution: int, max_pixels: int):
    """Decode, resize (short side) and centre-crop to ``resolution``; returns a [-1, 1] tensor
    (N, 3, R, R), the captions, and [(file, reason)] for images that could not be used."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = None  # own check below, on the header, before decoding
    arrays, caps, rejects = [], [], []
    for img_path, cap_path in pairs:
        try:
            with Image.open(img_path) as im:
                if im.width * im.height > max_pixels:
                    raise ValueError(f"{im.width}x{im.height} exceeds train.max_image_pixels")
                im = ImageOps.exif_transpose(im)
                if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
                    # RGBA crops from `rayft frames segment`: the character on white, not the
                    # background pixels its alpha hid
                    rgba = im.convert("RGBA")
                    im = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
                im = im.convert("RGB")
                im = ImageOps.fit(im, (resolution, resolution), Image.Resampling.BICUBIC)
                arr = np.asarray(im, dtype=np.float32)
            caption = Path(cap_path).read_text(encoding="utf-8").strip()
        except Exception as e:  # noqa: BLE001 - any decoder error rejects the one image
            rejects.append((os.path.basename(img_path), f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
            continue
        arrays.append(arr)
        caps.append(caption)
    if not arrays:
        return torch.zeros(0, 3, resolution, resolution), caps, rejects
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0
    return x, caps, rejects


# --------------------------------------------------------------------------------------
# one character (runs in a Tune trial, or in a plain process: benchmarks/frames_train_bench.py)


def _dtype(precision: str, device: str):
    import torch

    if device == "cpu" or precision == "fp32":
        return torch.float32
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]


class _Conditioner:
    """Caption embeddings (+ SDXL's pooled embeddings and size ids) from the frozen text encoder(s)."""

    def __init__(self, pipe, device: str, resolution: int):
        self.pipe, self.device, self.res = pipe, device, resolution
        self.xl = getattr(pipe, "text_encoder_2", None) is not None

    def __call__(self, captions: list[str]):
        import torch

        with torch.no_grad():
            if not self.xl:
                emb, _ = self.pipe.encode_prompt(captions, self.device, 1, False)
                return emb, None
            emb, _, pooled, _ = self.pipe.encode_prompt(prompt=captions, device=self.device,
                                                        num_images_per_prompt=1, do_classifier_free_guidance=False)
            r = self.res
            ids = torch.tensor([[r, r, 0, 0, r, r]], device=self.device, dtype=emb.dtype).repeat(len(captions), 1)
            return emb, {"text_embeds": pooled, "time_ids": ids}


def _checkpoints(char_dir: Path) -> list[Path]:
    d = char_dir / "_resume"
    return sorted(d.glob("step*.safetensors")) if d.is_dir() else []


def train_character(t, name: str, pairs: list, source: str, char_dir: Path, samples_dir: Path | None,
                    device: str = "cpu", report=None) -> dict:
    """Train one character's LoRA; returns its result record. Raises CharacterError when the
    character cannot be trained (its images, its loss), other exceptions for everything else."""
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from peft import LoraConfig

    from . import lora_io
    from .sd_model import default_resolution, load_pipeline

    t0 = time.time()
    char_dir.mkdir(parents=True, exist_ok=True)
    if device == "cpu":
        torch.set_num_threads(max(1, int(t.cpus_per_character)))
    dtype = _dtype(t.precision, device)
    pipe = load_pipeline(source, dtype, device)
    res = t.resolution or default_resolution(pipe)
    if t.max_images and len(pairs) > t.max_images:  # evenly spaced over the (episode-sorted) folder
        pairs = [pairs[round(i * (len(pairs) - 1) / (t.max_images - 1))] if t.max_images > 1 else pairs[0]
                 for i in range(t.max_images)]

    # The frozen VAE and text encoder run once per image/caption (kohya's cache_latents and
    # cache_text_encoder_outputs): each step then only runs the UNet. Images are decoded and
    # encoded 8 at a time, so memory holds latents, never a character's pixels.
    vae = pipe.vae
    sf, shift = vae.config.scaling_factor, getattr(vae.config, "shift_factor", None) or 0.0
    means, stds, captions, rejects = [], [], [], []
    for i in range(0, len(pairs), 8):
        pixels, caps, rej = load_images(pairs[i:i + 8], res, t.max_image_pixels)
        captions += caps
        rejects += rej
        if caps:
            with torch.no_grad():
                dist = vae.encode(pixels.to(device, dtype)).latent_dist
            means.append(dist.mean.float().cpu())
            stds.append(dist.std.float().cpu())
    if len(captions) < t.min_images:
        first = f"; first: {rejects[0][0]}: {rejects[0][1]}" if rejects else ""
        raise CharacterError(f"{len(captions)} of {len(pairs)} images usable (< train.min_images="
                             f"{t.min_images}){first}")
    trigger = t.trigger or detect_trigger(captions)
    mean, std = torch.cat(means), torch.cat(stds)
    cond = _Conditioner(pipe, device, res)
    uniq = sorted(set(captions))
    emb_of, extra_of = {}, {}
    for i in range(0, len(uniq), 16):
        chunk = uniq[i:i + 16]
        emb, extra = cond(chunk)
        for j, c in enumerate(chunk):
            emb_of[c] = emb[j:j + 1]
            extra_of[c] = None if extra is None else {k: v[j:j + 1] for k, v in extra.items()}
    cap_emb = torch.cat([emb_of[c] for c in captions])
    cap_extra = None if extra_of[captions[0]] is None else {
        k: torch.cat([extra_of[c][k] for c in captions]) for k in extra_of[captions[0]]}

    unet = pipe.unet
    torch.manual_seed(t.seed)
    unet.add_adapter(LoraConfig(r=t.rank, lora_alpha=t.alpha, init_lora_weights="gaussian",
                                target_modules=list(t.target_modules)))
    if dtype != torch.float32:
        from diffusers.training_utils import cast_training_params
        cast_training_params(unet, dtype=torch.float32)
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    n_t = sched.config.num_train_timesteps
    pred_type = sched.config.prediction_type
    n = len(captions)
    autocast = torch.autocast(device_type="cuda", dtype=dtype, enabled=device != "cpu" and dtype != torch.float32)

    def batch(step: int, salt: int = 0):
        """Everything random about ``step`` from a generator seeded by (seed, step): epoch-wise
        shuffled image order, latent sample, noise, timesteps. A resumed run draws the same."""
        bs = t.batch_size
        pos = step * bs
        idx = []
        while len(idx) < bs:
            epoch, off = divmod(pos, n)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(t.seed * 7919 + epoch + salt))
            take = perm[off: off + bs - len(idx)].tolist()
            idx += take
            pos += len(take)
        g = torch.Generator().manual_seed(t.seed * 1_000_003 + step * 2 + 1 + salt)
        idx_t = torch.tensor(idx)
        lat = (mean[idx_t] + std[idx_t] * torch.randn(mean[idx_t].shape, generator=g) - shift) * sf
        noise = torch.randn(lat.shape, generator=g)
        ts = torch.randint(0, n_t, (bs,), generator=g)
        return idx_t, lat, noise, ts

    def loss_of(idx_t, lat, noise, ts):
        lat, noise, ts = lat.to(device), noise.to(device), ts.to(device)
        noisy = sched.add_noise(lat, noise, ts)
        target = noise if pred_type == "epsilon" else sched.get_velocity(lat, noise, ts)
        kw = {}
        if cap_extra is not None:
            kw["added_cond_kwargs"] = {k: v[idx_t].to(device) for k, v in cap_extra.items()}
        with autocast:
            pred = unet(noisy.to(dtype), ts, cap_emb[idx_t].to(device), **kw).sample
        return F.mse_loss(pred.float(), target.float())

    def probe() -> float:
        """Loss on a fixed set of images/noise/timesteps (the same before and after training)."""
        with torch.no_grad():
            vals = [loss_of(*batch(i, salt=10_000_019)).item() for i in range(4)]
        return float(sum(vals) / len(vals))

    start, losses, resumed_from, extra = 0, [], [], {}
    ckpts = _checkpoints(char_dir)
    if ckpts:
        start, losses, extra = lora_io.load_resume(ckpts[-1], unet, opt)
        resumed_from = extra.get("resumed_from", []) + [start]
        print(f"[{name}] resumed from step {start} ({ckpts[-1].name})", file=sys.stderr, flush=True)
    probe_start = extra.get("probe_start") if ckpts else probe()
    kohya_kw = dict(alpha=t.alpha, rank=t.rank, base_model=source, trigger=trigger,
                    dtype=torch.float32 if device == "cpu" else torch.float16)

    def save_step(step: int) -> None:
        peft_sd = lora_io.peft_unet_state(unet)
        lora_io.save_kohya(peft_sd, char_dir / f"{name}-step{step:06d}.safetensors", step=step, **kohya_kw)
        lora_io.save_resume(char_dir / "_resume" / f"step{step:06d}.safetensors", unet, opt, step, losses,
                            {"probe_start": probe_start, "resumed_from": resumed_from})
        for old in _checkpoints(char_dir)[:-1]:  # keep one resume state; kohya step files all stay
            old.unlink(missing_ok=True)

    t_train = time.time()
    unet.train()
    for step in range(start, t.max_steps):
        loss = loss_of(*batch(step))
        if not torch.isfinite(loss):
            raise CharacterError(f"loss is {loss.item()} at step {step + 1}")
        loss.backward()
        if t.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.item()))
        done = step + 1
        if report and (done % t.log_every == 0 or done == t.max_steps):
            w = losses[-t.log_every:]
            report({"step": done, "loss": sum(w) / len(w)})
        if t.save_every and done % t.save_every == 0 and done < t.max_steps:
            save_step(done)
    train_s = time.time() - t_train
    unet.eval()
    probe_end = probe()

    peft_sd = lora_io.peft_unet_state(unet)
    final = lora_io.save_kohya(peft_sd, char_dir / f"{name}.safetensors", step=t.max_steps, **kohya_kw)
    lora_io.save_adapter_dir(type(pipe), unet, char_dir / "adapter")
    plot_loss(losses, char_dir / "loss.png", name)
    grid = None
    if samples_dir is not None and t.sample_prompts and t.sample_seeds:
        grid = sample_grid(pipe, unet, t, trigger, res, device, samples_dir / name, name)
    tail = losses[-min(len(losses), max(t.log_every, 1)):]
    return {"status": "done", "steps": t.max_steps, "final_loss": sum(tail) / len(tail) if tail else None,
            "probe_loss_start": probe_start, "probe_loss_end": probe_end, "images": n, "rejected": len(rejects),
            "rejects": rejects[:20], "trigger": trigger, "resolution": res, "resumed_from": resumed_from,
            "trained_steps_this_run": t.max_steps - start, "train_s": round(train_s, 2),
            "images_per_s": round((t.max_steps - start) * t.batch_size / train_s, 3) if train_s > 0 else None,
            "wall_time_s": round(time.time() - t0, 2), "file": str(final), "adapter": str(char_dir / "adapter"),
            "samples": str(grid) if grid else None, "error": None}


def plot_loss(losses: list[float], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(range(1, len(losses) + 1), losses, lw=0.6, alpha=0.5, label="loss")
    k = max(1, len(losses) // 20)
    if len(losses) >= k > 1:
        ma = [sum(losses[max(0, i - k + 1): i + 1]) / len(losses[max(0, i - k + 1): i + 1]) for i in range(len(losses))]
        ax.plot(range(1, len(losses) + 1), ma, lw=1.5, label=f"mean of {k}")
    ax.set_xlabel("step")
    ax.set_ylabel("noise-prediction MSE")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def sample_grid(pipe, unet, t, trigger: str, res: int, device: str, out: Path, name: str) -> Path:
    """Each prompt x seed drawn by the base model (adapter off) and with the LoRA; one grid PNG
    (top row base, bottom row LoRA) plus the single images."""
    import torch
    from PIL import Image, ImageDraw

    out.mkdir(parents=True, exist_ok=True)
    cells = [(i, p.format(trigger=trigger), s) for i, p in enumerate(t.sample_prompts) for s in t.sample_seeds]
    rows = {}
    for label, on in (("base", False), ("lora", True)):
        (unet.enable_adapters if on else unet.disable_adapters)()
        imgs = []
        for i, prompt, seed in cells:
            g = torch.Generator(device).manual_seed(int(seed))
            with torch.no_grad():
                im = pipe(prompt, num_inference_steps=t.sample_steps, guidance_scale=t.guidance_scale,
                          height=res, width=res, generator=g).images[0]
            tmp = out / f".{label}_p{i}_s{seed}.tmp.png"
            im.save(tmp)
            os.replace(tmp, out / f"{label}_p{i}_s{seed}.png")
            imgs.append(im)
        rows[label] = imgs
    unet.enable_adapters()
    cell = max(res, 128)
    head, pad = 14, 2
    title = f"{name}: top = base model, bottom = LoRA (same prompt and seed)"
    width = max(len(cells) * (cell + pad) + 48, 6 * len(title) + 8)
    grid = Image.new("RGB", (width, 2 * (cell + head + pad) + head), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((4, 2), title, fill="black")
    for r, label in enumerate(("base", "lora")):
        y = head + r * (cell + head + pad)
        draw.text((4, y + head + cell // 2), label, fill="black")
        for c, ((i, prompt, seed), im) in enumerate(zip(cells, rows[label])):
            x = 48 + c * (cell + pad)
            draw.text((x, y + 2), f"p{i} s{seed}", fill="black")
            grid.paste(im.resize((cell, cell), Image.Resampling.NEAREST), (x, y + head))
    (out / "prompts.json").write_text(json.dumps([{"prompt": p, "seed": s, "file": f"p{i}_s{s}"} for i, p, s in cells],
                                                 indent=1), encoding="utf-8")
    path = out / "grid.png"
    tmp = out / ".grid.tmp.png"
    grid.save(tmp)
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------
# Ray Tune: one trial per character


def _failed(error: str, t0: float, **kw) -> dict:
    return {"status": "failed", "steps": kw.pop("steps", 0), "final_loss": None,
            "wall_time_s": round(time.time() - t0, 2), "error": error, **kw}


def _trial(config: dict, *, cfg: dict, pairs: dict, source: str, output: str, samples: str) -> None:
    """Tune function trainable: trains ``config["character"]``; its own errors become a
    ``failed`` record (not retried); a dead worker is retried by Tune and resumes."""
    from ray import tune

    from ..config import from_dict
    from .config import FramesConfig

    name = config["character"]
    t = from_dict(FramesConfig, cfg).train
    char_dir = Path(output) / name
    char_dir.mkdir(parents=True, exist_ok=True)
    (char_dir / "worker.pid").write_text(str(os.getpid()))
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.time()
    try:
        rec = train_character(t, name, pairs[name], source, char_dir, Path(samples), device,
                              report=lambda m: tune.report(m))
    except CharacterError as e:
        rec = _failed(str(e), t0)
    except Exception as e:  # noqa: BLE001 - OOM, unreadable model...: this character only
        tb = traceback.format_exc(limit=-3)
        print(f"[{name}] failed:\n{tb}", file=sys.stderr, flush=True)
        rec = _failed(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500], t0)
    rec["character"] = name
    atomic_write_json(char_dir / "status.json", rec)
    tune.report({"step": rec.get("steps", 0), "status": rec["status"], "done": 1})


def _status(char_dir: Path) -> dict | None:
    try:
        return json.loads((char_dir / "status.json").read_text())
    except (OSError, ValueError):
        return None


def run_frames_train(cfg) -> str:
    """Driver: pick characters, one Tune trial each, collect pipeline_results.json; returns its path."""
    from .sd_model import resolve_model

    t = cfg.train
    if not t.output:
        raise ConfigError("train.output (alias output=): required")
    out = Path(t.output).resolve()
    chars, skipped = discover(cfg)
    if t.only:
        unknown = [c for c in t.only if c not in chars]
        if unknown:
            why = "; ".join(f"{c}: {skipped.get(c, 'no such folder')}" for c in unknown[:3])
            raise ConfigError(f"train.only: cannot train {why}")
        chars = {c: chars[c] for c in t.only}
    finished = {c for c in chars if (s := _status(out / c)) and s.get("status") == "done"
                and (out / c / f"{c}.safetensors").exists()}
    todo = [c for c in chars if c not in finished]
    if t.max_characters:
        todo = todo[: t.max_characters]
    samples = Path(t.samples_dir).resolve() if t.samples_dir else out / "lora_tests"
    out.mkdir(parents=True, exist_ok=True)
    print(f"frames train: {len(chars)} characters, {len(finished)} done before, {len(todo)} to train, "
          f"{len(skipped)} skipped (too few images)", file=sys.stderr, flush=True)
    errors: dict[str, str] = {}
    if todo:
        for c in todo:  # a retrained failure starts clean; an interrupted one keeps _resume/
            st = _status(out / c)
            if st and st.get("status") == "failed":
                (out / c / "status.json").unlink(missing_ok=True)
        source = resolve_model(t.model, t.model_seed)
        errors = _run_tune(cfg, {c: chars[c] for c in todo}, source, out, samples)
    results = collect(out, chars, skipped, errors, t)
    path = atomic_write_json(out / RESULTS, results)
    tot = results["totals"]
    print(f"frames train: {tot['done']} done, {tot['failed']} failed, {tot['skipped']} skipped -> {path}",
          file=sys.stderr, flush=True)
    return str(path)


def _run_tune(cfg, pairs: dict, source: str, out: Path, samples: Path) -> dict[str, str]:
    started = _env.ray_start(log_to_driver=True)
    import ray
    from ray import tune

    t = cfg.train
    try:
        total = ray.cluster_resources()
        gpus = t.gpus_per_character if t.gpus_per_character >= 0 else (1.0 if total.get("GPU", 0) >= 1 else 0.0)
        res = {"cpu": t.cpus_per_character, "gpu": gpus}
        if t.memory_gb > 0:
            res["memory"] = int(t.memory_gb * 2**30)
        fit = [total.get("CPU", 0) / t.cpus_per_character]
        if gpus:
            fit.append(total.get("GPU", 0) / gpus)
        if t.memory_gb > 0:
            fit.append(total.get("memory", 0) / res["memory"])
        at_once = max(1, int(min(fit)))
        if t.concurrency:
            at_once = min(at_once, t.concurrency)
        print(f"frames train: {len(pairs)} trials, {res} each -> {at_once} at once", file=sys.stderr, flush=True)
        trainable = tune.with_resources(
            tune.with_parameters(_trial, cfg=to_dict(cfg), pairs=pairs, source=source, output=str(out),
                                 samples=str(samples)), res)
        tuner = tune.Tuner(
            trainable, param_space={"character": tune.grid_search(sorted(pairs, key=_natural_key))},
            tune_config=tune.TuneConfig(max_concurrent_trials=at_once, reuse_actors=False,
                                        trial_name_creator=lambda tr: tr.config["character"],
                                        trial_dirname_creator=lambda tr: tr.config["character"]),
            run_config=tune.RunConfig(name=time.strftime("run-%Y%m%d-%H%M%S"), storage_path=str(out / "_tune"),
                                      failure_config=tune.FailureConfig(max_failures=t.retries), verbose=1))
        grid = tuner.fit()
        errors = {}
        for r in grid:
            if r.error is not None:
                name = r.config.get("character", "?")
                errors[name] = f"{type(r.error).__name__}: {str(r.error).strip().splitlines()[-1][:300]}"
        return errors
    finally:
        if started:
            ray.shutdown()


def collect(out: Path, chars: dict, skipped: dict, errors: dict, t) -> dict:
    characters = {}
    for c in chars:
        st = _status(out / c)
        if st is None:
            if c in errors:
                st = _failed(f"worker died {t.retries + 1} time(s): {errors[c]}", time.time(),
                             steps=_resumable_step(out / c))
                atomic_write_json(out / c / "status.json", {**st, "character": c})
            else:
                st = {"status": "pending", "steps": _resumable_step(out / c), "error": None}
        characters[c] = st
    statuses = Counter(s["status"] for s in characters.values())
    return {"input": str(Path(t.input).resolve()), "model": t.model, "characters": characters,
            "skipped": skipped, "totals": {"done": statuses.get("done", 0), "failed": statuses.get("failed", 0),
                                           "pending": statuses.get("pending", 0), "skipped": len(skipped)},
            "settings": {k: getattr(t, k) for k in ("rank", "alpha", "lr", "max_steps", "batch_size", "resolution")}}


def _resumable_step(char_dir: Path) -> int:
    ck = _checkpoints(char_dir)
    return int(re.sub(r"\D", "", ck[-1].stem) or 0) if ck else 0

