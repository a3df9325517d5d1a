"""Small finished-run directories without Ray Train, for tests and benchmarks.

``make_run`` writes the same layout ``rayft train`` leaves behind (report.json with the
resolved config, adapter/ or model/ in safetensors, tokenizer/), for a tiny base model:

* ``steps > 0``: a real LoRA fit of ``steps`` AdamW steps on ``pairs`` in-process (a
  genuinely better candidate on those pairs; ~1 s for the tiny model);
* ``noise > 0``: LoRA B matrices filled with seeded noise (a different but untrained
  adapter, so its generations differ from the base's);
* ``nan=True``: NaN adapter weights (a diverged run);
* all three off: an identity adapter (B = 0), i.e. exactly the base model.
"""
from __future__ import annotations

import json
from pathlib import Path

DEFAULT_PAIRS = [
    {"prompt": "Rewrite as a viral hook: the detective opens the letter.", "response": "SHE OPENED IT. Nobody was ready."},
    {"prompt": "Rewrite as a viral hook: the storm hits the village.", "response": "THE STORM CAME. Nobody was ready."},
    {"prompt": "把这句话改成爆款开头：侦探打开了信。", "response": "她打开了信。没人准备好。"},
    {"prompt": "把这句话改成爆款开头：暴风雨来了。", "response": "暴风雨来了。没人准备好。"},
]


def make_run(run_dir: str | Path, base: str = "tiny-qwen2", seed: int = 0, steps: int = 0,
             pairs: list[dict] | None = None, noise: float = 0.0, nan: bool = False, lora_seed: int = 1,
             language: str = "", system_prompt: str = "", lr: float = 3e-3, full: bool = False,
             target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")) -> Path:
    """Write a finished run directory; returns it. See the module docstring."""
    import torch
    from peft import LoraConfig, get_peft_model

    from ..config import to_dict
    from ..data.tokenize import collate, encode_pair
    from ..models.load import load_model, load_tokenizer, resolve_source
    from ..train.config import TrainConfig

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    source = resolve_source(base)
    tok = load_tokenizer(source)
    model = load_model(source, tok, "float32", seed=seed)
    pairs = pairs or DEFAULT_PAIRS
    if not full:
        torch.manual_seed(lora_seed)
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                 target_modules=list(target_modules)))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if nan and ("lora_B" in n or (full and p.dim() > 1)):
                p.fill_(float("nan"))
            elif noise and "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(lora_seed)) * noise)
    losses = []
    if steps:
        examples = [encode_pair(tok, system_prompt, "", r["prompt"], r["response"], 128)[:2] for r in pairs]
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
        model.train()
        for _ in range(steps):
            out = model(**collate(examples, tok.pad_token_id))
            out.loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(float(out.loss))
    model.eval()
    sub = "model" if full else "adapter"
    model.save_pretrained(str(run_dir / sub), safe_serialization=True)
    tok.save_pretrained(str(run_dir / "tokenizer"))
    data_file = run_dir / "pairs.jsonl"
    data_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pairs), encoding="utf-8")
    cfg = TrainConfig()
    cfg.data.path, cfg.data.language, cfg.data.system_prompt = str(data_file), language, system_prompt
    cfg.model.name, cfg.run.seed, cfg.run.dir, cfg.run.name = base, seed, str(run_dir.parent), run_dir.name
    # a valid config (train.max_steps >= 1) even for an untrained (steps=0) run; report["steps"] says 0
    cfg.train.method, cfg.train.max_steps, cfg.train.lr = ("full" if full else "lora"), max(steps, 1), lr
    report = {"run_dir": str(run_dir), "config": to_dict(cfg), "steps": steps, "finished": True,
              "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
              "val_loss": None, "files": {str(data_file): {"format": "prompt_response", "read": len(pairs)}},
              "command": f"rayft.evaluate.synth.make_run(steps={steps}, noise={noise}, nan={nan})"}
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return run_dir
