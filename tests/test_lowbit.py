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



def _train(model, trainable, batch, steps: int) -> list[float]:
    """``steps`` AdamW steps (lr 3e-3) on one batch; the loss of each."""
    opt = torch.optim.AdamW(trainable, lr=3e-3)
    losses = []
    for _ in range(steps):
        out = model(**batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(out.loss))
    return losses

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
    losses = _train(model, trainable, batch, 15)
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


# ---- model.quantize=int8 / nf4: bitsandbytes' layers under peft's bnb LoRA layers -----------------
@pytest.mark.parametrize("mode,ratio", [("int8", 0.27), ("nf4", 0.14)])
def test_bnb_base_shrinks_trains_lora_only_and_exports(tok, batch, tmp_path, mode, ratio):
    import bitsandbytes as bnb
    from peft import PeftModel

    from rayft.train.lowbit import BASE_BYTES, dequantized_base, quantized_param_names

    cfg = load(TrainConfig, REPO / "configs/tiny.yaml", [f"model.quantize={mode}", "lora.dropout=0"])
    src = resolve_source(cfg.model.name)
    layer = bnb.nn.Linear8bitLt if mode == "int8" else bnb.nn.Linear4bit

    # the decoder's linear weights in about BASE_BYTES per parameter, scales included
    fp = load_model(src, tok, "float32", seed=0)
    q = store_base_compact(load_model(src, tok, "bfloat16", seed=0), mode)
    qlin = [m for m in q.modules() if isinstance(m, layer)]
    n = sum(m.in_features * m.out_features for m in qlin)
    assert len(qlin) == sum(type(m) is torch.nn.Linear for m in fp.modules()) - 1  # all but the tied lm_head
    qbytes = sum(m.weight.numel() * m.weight.element_size() for m in qlin)
    if mode == "int8":
        qbytes += sum(m.weight.SCB.numel() * 4 for m in qlin)
    else:  # 4-bit data + double-quantized block scales
        st = [m.weight.quant_state for m in qlin]
        qbytes += sum(s.absmax.numel() + s.state2.absmax.numel() * 4 + s.state2.code.numel() * 4 / len(st) for s in st)
    assert qbytes / (4 * n) < ratio and abs(qbytes / n - BASE_BYTES[mode]) < 0.1 * BASE_BYTES[mode]

    # LoRA on it: peft's own bnb layers, only the LoRA weights get gradients, the base never moves
    model = build_model(cfg, src, tok)
    wrapped = [m for m in model.modules() if hasattr(m, "lora_A")]
    assert wrapped and all(type(m).__module__ == "peft.tuners.lora.bnb" for m in wrapped)
    names = quantized_param_names(model)
    assert names and model._ddp_params_and_buffers_to_ignore == names
    params = dict(model.named_parameters())
    before = {k: params[k].data.clone() for k in names}
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    opt = torch.optim.AdamW(trainable, lr=3e-3)
    losses = []
    for _ in range(12):
        out = model(**batch)
        assert torch.isfinite(out.loss)
        out.loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
        opt.step()
        opt.zero_grad()
        losses.append(float(out.loss))
    assert losses[-1] < losses[0] - 0.1, losses
    assert all(torch.equal(params[k].data, before[k]) for k in names)

    # `rayft export`'s merge: the adapter on the dequantized fp32 base = the trained model
    model.eval()
    model.save_pretrained(str(tmp_path / "adapter"), safe_serialization=True)
    with torch.no_grad():
        want = model(**batch).logits
        base = dequantized_base(base_model(cfg, src, tok), mode)
        assert {p.dtype for p in base.parameters()} == {torch.float32}
        merged = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).merge_and_unload().eval()
        assert not any(isinstance(m, layer) for m in merged.modules())
        got = merged(**batch).logits
    # nf4: the same dequantized weights; int8: bitsandbytes' int8 matmul also rounds the activations
    tol = 2e-3 if mode == "nf4" else 5e-2
    assert float((got - want).abs().max()) < tol * float(want.abs().max())


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_bnb_quantize_refuses_other_methods(mode):
    with pytest.raises(ConfigError, match=f"model.quantize={mode} .*train.method=lora"):
        load(TrainConfig, REPO / "configs/tiny.yaml", [f"model.quantize={mode}", "train.method=full"])


def test_estimate_counts_the_quantized_base():
    from rayft.train.lowbit import BASE_BYTES
    from rayft.train.memory import estimate
    from rayft.train.shape import model_shape

    full = load(TrainConfig, REPO / "configs/tiny.yaml", [])
    shape = model_shape(full, "tiny-qwen2")
    base = estimate(full, shape).parts
    for mode in ("int8", "nf4"):
        q = estimate(load(TrainConfig, REPO / "configs/tiny.yaml", [f"model.quantize={mode}"]), shape).parts
        assert q["weights"] == pytest.approx((shape.n_params - shape.embed_params) * BASE_BYTES[mode]
                                             + shape.embed_params * 2)
        assert q["weights"] < base["weights"] / 2 and q["optimizer"] == base["optimizer"]
        steady = sum(v for k, v in q.items() if k not in ("runtime", "load"))
        # quantized while loading: the compact weights + one transient bf16 embedding copy
        assert q["load"] == max(0.0, q["weights"] + 2 * shape.embed_params - steady)
        r = load(TrainConfig, REPO / "configs/tiny.yaml", [f"model.quantize={mode}", "model.init=random"])
        assert "load" not in estimate(r, shape).parts  # random init is quantized layer by layer


def test_random_init_quantized_layer_by_layer(tok, batch, tmp_path):
    """model.init=random + nf4: the architecture is built one quantized layer at a time and is the
    same architecture (parameter count) as transformers' from_config; LoRA on it trains."""
    import json
    import shutil

    import bitsandbytes as bnb
    from transformers import AutoModelForCausalLM

    from rayft.models.load import TINY, TINY_TOKENIZER
    from rayft.train.shape import hf_config

    d = tmp_path / "qwen2-random"
    d.mkdir()
    model_type, kw = TINY["tiny-qwen2"]
    (d / "config.json").write_text(json.dumps(dict(kw, model_type=model_type, vocab_size=len(tok),
                                                   architectures=["Qwen2ForCausalLM"])))
    for f in TINY_TOKENIZER.iterdir():
        shutil.copy(f, d / f.name)
    cfg = load(TrainConfig, REPO / "configs/tiny.yaml", [f"model.name={d}", "model.init=random",
                                                         "model.quantize=nf4", "lora.dropout=0"])
    ref = AutoModelForCausalLM.from_config(hf_config(str(d)))
    base = base_model(cfg, str(d), tok)
    assert len(base.model.layers) == ref.config.num_hidden_layers == base.config.num_hidden_layers
    lin = [m for m in base.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(lin) == 7 * ref.config.num_hidden_layers
    assert sum(m.in_features * m.out_features for m in lin) + sum(
        p.numel() for n, p in base.named_parameters() if not isinstance(p, bnb.nn.Params4bit)
    ) == sum(p.numel() for p in ref.parameters())
    model = build_model(cfg, str(d), tok)
    trainable = [p for p in model.parameters() if p.requires_grad]
    losses = _train(model, trainable, batch, 8)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_pretrained_base_quantized_while_loading_same_as_compact(tok, batch, tmp_path, mode):
    """A pretrained (safetensors) base with model.quantize=int8|nf4 is quantized by transformers'
    BitsAndBytesConfig as each weight is read (lowbit.bnb_config; no whole bf16 copy) and ends up
    identical to the old path - the whole base loaded in bf16, then store_base_compact: same
    module types, bit-equal weights after dequantization, same frozen-ness, dtypes, tied
    embedding, DDP ignore list; `rayft export`'s dequantized_base reproduces it; LoRA trains."""
    import bitsandbytes as bnb

    from rayft.models.load import TINY_TOKENIZER, build_tiny
    from rayft.train.lowbit import dequantize_linear, dequantized_base, quantized_param_names

    d = tmp_path / "pretrained"
    build_tiny("tiny-qwen2", len(tok), seed=3).to(torch.bfloat16).save_pretrained(str(d), safe_serialization=True)
    for f in TINY_TOKENIZER.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    cfg = load(TrainConfig, REPO / "configs/tiny.yaml", [f"model.name={d}", f"model.quantize={mode}", "lora.dropout=0"])
    layer = bnb.nn.Linear8bitLt if mode == "int8" else bnb.nn.Linear4bit

    loaded = base_model(cfg, str(d), tok)  # quantized by transformers + bitsandbytes while loading
    assert sum(isinstance(m, layer) for m in loaded.modules()) == 7 * 2
    new = store_base_compact(loaded, mode)
    old = store_base_compact(load_model(str(d), tok, "bfloat16"), mode)
    om, nm = dict(old.named_modules()), dict(new.named_modules())
    assert {k: type(v) for k, v in om.items()} == {k: type(v) for k, v in nm.items()}
    lin = [k for k, v in nm.items() if isinstance(v, layer)]
    for k in lin:
        assert torch.equal(dequantize_linear(nm[k]), dequantize_linear(om[k])), k
        if mode == "int8":
            assert nm[k].state.threshold == om[k].state.threshold == 0.0
    op, np_ = dict(old.named_parameters()), dict(new.named_parameters())
    assert op.keys() == np_.keys()
    for k, p in np_.items():
        q = op[k]
        assert (type(p), p.dtype, p.requires_grad) == (type(q), q.dtype, q.requires_grad), k
        assert torch.equal(p.data, q.data), k
    assert new.get_output_embeddings().weight is new.get_input_embeddings().weight  # tied, bf16, frozen
    assert quantized_param_names(new) == quantized_param_names(old) and len(quantized_param_names(new)) == len(lin)
    assert getattr(new, "is_loaded_in_8bit" if mode == "int8" else "is_loaded_in_4bit") is True

    # what `rayft export` merges into (the bf16 base quantized + dequantized) is this base
    deq = dict(dequantized_base(load_model(str(d), tok, "bfloat16"), mode).named_parameters())
    for k in lin:
        assert torch.equal(deq[k + ".weight"], dequantize_linear(nm[k])), k
    with torch.no_grad():
        a, b = new(**batch).logits, old(**batch).logits
    assert torch.equal(a, b)

    # the train worker's build: peft's bnb LoRA layers, DDP ignores the quantized weights, it trains
    model = build_model(cfg, str(d), tok)
    assert model._ddp_params_and_buffers_to_ignore == quantized_param_names(model)
    assert len(model._ddp_params_and_buffers_to_ignore) == len(lin)
    wrapped = [m for m in model.modules() if hasattr(m, "lora_A")]
    assert wrapped and all(type(m).__module__ == "peft.tuners.lora.bnb" for m in wrapped)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    losses = _train(model, trainable, batch, 8)
    assert losses[-1] < losses[0], losses
