"""train.loss_chunk (issue 19 item 4): the chunked cross-entropy equals transformers' own loss
and gradients, with LoRA, padding, prompt masking and packed position ids, and never builds the
batch x seq x vocab logits. Pure torch (no Ray); the Ray Train run is in test_train_run."""
from __future__ import annotations

import pytest
import torch

from rayft.config import ConfigError, load
from rayft.train.chunked_loss import ChunkedLossLM, labelled_ce
from rayft.train.config import TrainConfig


def tiny(vocab=512, lora=True):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    m = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    if lora:
        m = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
        for n, p in m.named_parameters():  # non-zero B so the adapter changes the output
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.05)
    return m


def batch(vocab=512):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (3, 40), generator=g)
    labels = ids.clone()
    labels[:, :15] = -100          # prompt
    labels[2, 30:] = -100          # padding of a shorter row
    att = torch.ones_like(ids)
    att[2, 30:] = 0
    return ids, labels, att


def grads(m):
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk", [1, 7, 64, 4096])
def test_same_loss_and_gradients_as_transformers(chunk):
    m = tiny()
    ids, labels, att = batch()
    ref = m(input_ids=ids, attention_mask=att, labels=labels).loss
    ref.backward()
    g_ref = grads(m)
    m.zero_grad(set_to_none=True)
    out = ChunkedLossLM(m, chunk)(input_ids=ids, labels=labels, attention_mask=att)
    out.loss.backward()
    g = grads(m)
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    assert g.keys() == g_ref.keys() and any("lora_" in k for k in g)
    for k in g:
        assert torch.allclose(g[k], g_ref[k], rtol=1e-4, atol=1e-6), k


def test_packed_position_ids_match_the_unchunked_forward():
    m = tiny(lora=False)
    ids, labels, _ = batch()
    pos = torch.cat([torch.arange(20), torch.arange(20)]).repeat(3, 1)  # two examples per row
    ref = m(input_ids=ids, position_ids=pos, labels=labels, use_cache=False).loss  # as packing.collate
    total, n = labelled_ce(m, ids, labels, 16, position_ids=pos)
    assert (total / n).item() == pytest.approx(ref.item(), rel=1e-5)


def test_logits_never_cover_the_whole_batch(monkeypatch):
    """The output head only ever sees one chunk of labelled positions, in forward and in the
    backward's recomputation; prompt and padding positions never reach it."""
    m = tiny()
    ids, labels, att = batch()
    seen = []
    head = m.get_base_model().get_output_embeddings()
    head.register_forward_hook(lambda mod, inp, out: seen.append(tuple(out.shape)))
    ChunkedLossLM(m, 8)(input_ids=ids, labels=labels, attention_mask=att).loss.backward()
    n_labelled = int((labels[:, 1:] != -100).sum())
    assert seen and max(s[0] for s in seen) == 8 and all(len(s) == 2 for s in seen)
    assert sum(s[0] for s in seen) == 2 * n_labelled  # forward + recomputed in backward


def test_config_takes_every_strategy_and_refuses_negative(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("data: {path: x.jsonl}\n")
    assert load(TrainConfig, p, ["train.loss_chunk=1024"]).train.loss_chunk == 1024
    for strategy in ("zero2", "zero3"):  # tests/test_deepspeed_run.py trains ZeRO-3 with it
        assert load(TrainConfig, p, ["train.loss_chunk=1024", f"train.strategy={strategy}"]).train.loss_chunk == 1024
    with pytest.raises(ConfigError, match="loss_chunk"):
        load(TrainConfig, p, ["train.loss_chunk=-1"])


def test_ddp_ignore_list_follows_the_wrapper():
    """model.quantize marks the quantized base for DDP to skip; the wrapper DDP sees keeps it."""
    m = tiny()
    m._ddp_params_and_buffers_to_ignore = [n for n, _ in m.named_parameters() if "lora_" not in n]
    w = ChunkedLossLM(m, 8)
    names = dict(w.named_parameters())
    assert w._ddp_params_and_buffers_to_ignore and all(n in names for n in w._ddp_params_and_buffers_to_ignore)
    assert not any("lora_" in n for n in w._ddp_params_and_buffers_to_ignore)


def test_validation_sums_equal_the_full_logits_ones():
    """The worker's validation loss with train.loss_chunk (no full logits) = without it."""
    import numpy as np

    from rayft.train.loop import _evaluate

    m = tiny()
    g = np.random.default_rng(3)
    rows = []
    for n in (12, 30, 21, 7, 25):  # uneven lengths: padded batches; prompt = first 5 tokens
        ids = g.integers(1, 512, n)
        lab = ids.copy()
        lab[:5] = -100
        rows.append((ids, lab))
    full = _evaluate(m, rows, 2, 0, torch.device("cpu"))
    for chunk in (3, 64):
        s, c = _evaluate(m, rows, 2, 0, torch.device("cpu"), loss_chunk=chunk)
        assert c == full[1] == sum(int((r[1][1:] != -100).sum()) for r in rows)
        assert s == pytest.approx(full[0], rel=1e-5)
