"""model.quantize=bf16-storage (rayft.train.lowbit) on the tiny model, no Ray: the frozen base
is stored in half the bytes and still computed in fp32, backward keeps only the compact
weights, a LoRA on it trains (loss falls), and its adapter loads back (onto a bf16-storage
base exactly, onto the fp32 base as `rayft export` merges it)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rayft.config import ConfigError, load
from rayft.data.tokenize import collate, encode_pair
from rayft.models.load import load_model, load_tokenizer, resolve_source
from rayft.testing.runs import DEFAULT_PAIRS
from rayft.train.build import base_model, build_model
from rayft.train.config import TrainConfig
from rayft.train.lowbit import store_base_compact

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(resolve_source("tiny-qwen2"))


@pytest.fixture(scope="module")
def batch(tok):
    return collate([encode_pair(tok, "", "", r["prompt"], r["response"], 128)[:2] for r in DEFAULT_PAIRS],
                   tok.pad_token_id)


def _bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_half_the_bytes_same_outputs_fp32_compute(tok, batch):
    src = resolve_source("tiny-qwen2")
    ref = load_model(src, tok, "float32", seed=0)
    m = store_base_compact(load_model(src, tok, "float32", seed=0), "bf16-storage")
    lin = [x for x in m.modules() if isinstance(x, torch.nn.Linear)]
    assert lin and all(x.weight.dtype == torch.bfloat16 for x in lin)
    assert m.get_input_embeddings().weight.dtype == torch.bfloat16
    assert _bytes(m) < 0.55 * _bytes(ref)
    with torch.no_grad():
        a, b = m(**batch), ref(**batch)
    assert a.logits.dtype == torch.float32
    assert float((a.logits - b.logits).abs().max()) < 2e-2  # bf16 rounding of the weights only
    assert abs(float(a.loss) - float(b.loss)) < 1e-2


def test_backward_saves_only_compact_weights(tok, batch):
    m = store_base_compact(load_model(resolve_source("tiny-qwen2"), tok, "float32", seed=0), "bf16-storage")
    shapes = {tuple(x.weight.shape) for x in m.modules() if isinstance(x, torch.nn.Linear)}
    saved = []

    def pack(t):
        saved.append((t.dtype, tuple(t.shape)))
        return t

    emb = m.get_input_embeddings()(batch["input_ids"]).requires_grad_(True)  # so the layers record backward
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = m(inputs_embeds=emb, attention_mask=batch["attention_mask"], labels=batch["labels"])
    out.loss.backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all()
    weights = [s for s in saved if s[1] in shapes]
    assert weights and all(dt == torch.bfloat16 for dt, _ in weights), weights


def test_lora_on_bf16_storage_trains_and_adapter_loads_back(tok, batch, tmp_path):
    from peft import PeftModel

    cfg = load(TrainConfig, REPO / "configs/tiny.yaml", ["model.quantize=bf16-storage", "lora.dropout=0"])
    src = resolve_source(cfg.model.name)
    model = build_model(cfg, src, tok)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    opt = torch.optim.AdamW(trainable, lr=3e-3)
    losses = []
    for _ in range(15):
        out = model(**batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(out.loss))
    assert losses[-1] < losses[0] - 0.1, losses
    model.eval()
    model.save_pretrained(str(tmp_path / "adapter"), safe_serialization=True)
    with torch.no_grad():
        want = model(**batch).logits
        back = PeftModel.from_pretrained(store_base_compact(base_model(cfg, src, tok), "bf16-storage"),
                                         str(tmp_path / "adapter")).eval()  # as the worker builds it
        assert torch.equal(back(**batch).logits, want)
        merged = PeftModel.from_pretrained(load_model(src, tok, "float32", seed=cfg.run.seed),
                                           str(tmp_path / "adapter")).merge_and_unload().eval()
        assert all(p.dtype == torch.float32 for p in merged.parameters())
        assert float((merged(**batch).logits - want).abs().max()) < 2e-2


@pytest.mark.parametrize("bad", ["train.method=full", "train.strategy=zero2"])
def test_quantize_needs_lora_ddp(bad):
    with pytest.raises(ConfigError, match="model.quantize=bf16-storage .*train.method=lora and train.strategy=ddp"):
        load(TrainConfig, REPO / "configs/tiny.yaml", ["model.quantize=bf16-storage", bad])


def test_estimate_counts_the_base_in_two_bytes():
    from rayft.train.memory import estimate
    from rayft.train.shape import model_shape

    full = load(TrainConfig, REPO / "configs/tiny.yaml", [])
    half = load(TrainConfig, REPO / "configs/tiny.yaml", ["model.quantize=bf16-storage"])
    shape = model_shape(full, "tiny-qwen2")
    a, b = estimate(full, shape).parts, estimate(half, shape).parts
    assert b["weights"] == a["weights"] / 2 and b["optimizer"] == a["optimizer"]
