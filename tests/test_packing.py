"""Sequence packing (data.packing, rayft.data.packing): first-fit is deterministic and never
overfills, and a packed example is computed exactly as alone: its per-token logits match
within 1e-5 under sdpa and eager attention (tiny Qwen2 and Llama, with a LoRA adapter), and
the packed loss equals the token-weighted loss of the examples. No Ray here (see
test_packing_run.py for a packed training run with exact resume)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rayft.data.packing import PackingError, check_isolation, collate_packed, first_fit, pack_examples
from rayft.data.tokenize import IGNORE, collate

pytestmark = pytest.mark.timeout(120)


def _examples(n: int, seed: int = 0, lo: int = 3, hi: int = 40, vocab: int = 200):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(lo, hi))
        ids = rng.integers(3, vocab, k)
        p = int(rng.integers(1, k))  # prompt tokens carry no loss
        out.append((ids, np.concatenate([np.full(p, IGNORE), ids[p:]])))
    return out


def test_first_fit_is_first_fit():
    assert first_fit([5, 5, 3, 2, 6, 4], 10) == [[0, 1], [2, 3, 5], [4]]
    assert first_fit([], 10) == []
    assert first_fit([10, 1, 10], 10) == [[0], [1], [2]]


def test_first_fit_matches_naive_and_never_overfills():
    rng = np.random.default_rng(1)
    for _ in range(20):
        lengths = rng.integers(1, 50, int(rng.integers(1, 300))).tolist()
        naive: list[list[int]] = []
        room: list[int] = []
        for i, n in enumerate(lengths):
            b = next((j for j, r in enumerate(room) if r >= n), None)
            if b is None:
                naive.append([]), room.append(50)
                b = len(naive) - 1
            naive[b].append(i)
            room[b] -= n
        assert first_fit(lengths, 50) == naive


def test_pack_examples_deterministic_and_complete():
    ex = _examples(60)
    a, b = pack_examples(ex, 64, seed=7), pack_examples(ex, 64, seed=7)
    assert len(a) == len(b) and all(np.array_equal(x[0], y[0]) for x, y in zip(a, b))
    assert all(len(p[0]) <= 64 for p in a)
    assert sorted(i for p in a for i in p[3]) == list(range(60)) and sum(len(p[0]) for p in a) == sum(len(e[0]) for e in ex)
    assert len(a) < 60 // 2  # short examples: several per row
    for ids, labels, pos, _ in a:  # every example starts at position 0 with no loss on its first token
        starts = np.flatnonzero(pos == 0)
        assert (labels[starts] == IGNORE).all() and len(ids) == len(labels) == len(pos)
    c = pack_examples(ex, 64, seed=8)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, c))


def _model(preset: str, attn: str, lora: bool):
    from peft import LoraConfig, get_peft_model

    from rayft.models.load import load_model, load_tokenizer, resolve_source
    source = resolve_source(preset)
    tok = load_tokenizer(source)
    model = load_model(source, tok, "float32", seed=0)
    model.config._attn_implementation = attn
    if lora:
        torch.manual_seed(1)
        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, task_type="CAUSAL_LM",
                                                 target_modules=["q_proj", "v_proj"]))
        with torch.no_grad():  # a non-identity adapter
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.05)
    return model.eval()


@pytest.mark.parametrize("preset,attn,lora", [("tiny-qwen2", "sdpa", True), ("tiny-qwen2", "eager", False),
                                              ("tiny-llama", "sdpa", False)])
def test_packed_logits_and_loss_equal_alone(preset, attn, lora):
    model = _model(preset, attn, lora)
    ex = _examples(12, seed=3, vocab=model.config.vocab_size)
    packs = pack_examples(ex, 96, seed=0)
    assert max(len(p[3]) for p in packs) >= 3
    batch = collate_packed(packs, pad_id=0)
    with torch.no_grad():
        out = model(**batch)
        logits = out.logits
        # each example alone, unpadded: per-token logits within 1e-5 of its slice of the packed row
        worst, loss_sum, n_tok = 0.0, 0.0, 0
        k = 0
        for r, (_, _, pos, members) in enumerate(packs):
            starts = np.flatnonzero(pos == 0).tolist() + [len(pos)]
            for s, e, j in zip(starts[:-1], starts[1:], members, strict=True):
                ids, lab = ex[j]
                k += 1
                assert np.array_equal(batch["input_ids"][r, s:e].numpy(), ids)
                alone = model(input_ids=torch.as_tensor(ids, dtype=torch.long)[None]).logits[0]
                worst = max(worst, float((logits[r, s:e] - alone).abs().max()))
                t = torch.as_tensor(lab[1:], dtype=torch.long)
                loss_sum += float(torch.nn.functional.cross_entropy(alone[:-1], t, ignore_index=IGNORE,
                                                                    reduction="sum"))
                n_tok += int((t != IGNORE).sum())
        assert k == len(ex)
        assert worst <= 1e-5, worst
        assert abs(float(out.loss) - loss_sum / n_tok) <= 1e-5
        # the padded (unpacked) batch gives the same loss too: packing changes no loss term
        assert abs(float(model(**collate(ex, 0)).loss) - loss_sum / n_tok) <= 1e-5


def test_check_isolation_passes_and_catches_a_leak():
    model = _model("tiny-qwen2", "sdpa", False)
    assert check_isolation(model, "cpu", model.config.vocab_size) <= 1e-5

    class Leaky(torch.nn.Module):  # what a model with a cache object (use_cache forced on) does
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, **kw):
            kw["use_cache"] = True
            return self.m(**kw)

    with pytest.raises(PackingError, match="data.packing"):
        check_isolation(Leaky(model), "cpu", model.config.vocab_size)
