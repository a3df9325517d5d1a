"""train.vocab_chunks (issue 19 item 3): the embedding and head as vocabulary slices give the
same logits, loss and gradients as the whole matrix, tied or not, and the estimator counts
one slice instead of the whole matrix. Pure torch (no Ray); the ZeRO-3 run (partitioned
slices, checkpoint/resume, the saved Hugging Face artifact) is in test_deepspeed_run."""
from __future__ import annotations

import copy

import pytest
import torch

from rayft.config import ConfigError, from_dict
from rayft.train.chunked_loss import labelled_ce
from rayft.train.config import TrainConfig
from rayft.train.vocab_chunks import VocabChunkedEmbedding, VocabChunkedHead, artifact_layout, chunk_vocab


def tiny(tied: bool, vocab: int = 500):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied))


def batch(vocab: int = 500):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (2, 24), generator=g)
    ids[0, :4] = torch.tensor([0, vocab - 1, 166, 167])  # both ends and a slice boundary (500/3 -> 167)
    labels = ids.clone()
    labels[:, :6] = -100
    return ids, labels


def _full(m, name):
    """The whole matrix's value (or gradient) from a chunked model, by its Hugging Face name."""
    layout = artifact_layout(m)
    parts = sorted(((lo, n) for n, (hf, lo, _) in layout.items() if hf == name))
    named = dict(m.named_parameters())
    return [named[n] for _, n in parts]


@pytest.mark.parametrize("tied", [True, False])
def test_slices_give_the_same_logits_loss_and_gradients(tied):
    ref = tiny(tied)
    got = copy.deepcopy(ref)
    chunk_vocab(got, 3)
    assert isinstance(got.get_input_embeddings(), VocabChunkedEmbedding)
    assert isinstance(got.get_output_embeddings(), VocabChunkedHead)
    assert not any(isinstance(m, torch.nn.Embedding) for m in got.modules())
    ids, labels = batch()
    a, b = ref(input_ids=ids, labels=labels), got(input_ids=ids, labels=labels)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)
    assert torch.allclose(a.loss, b.loss, atol=1e-6)
    a.loss.backward()
    b.loss.backward()
    names = ["model.embed_tokens.weight"] + ([] if tied else ["lm_head.weight"])
    for name in names:
        want = dict(ref.named_parameters())[name]
        parts = _full(got, name)
        assert len(parts) == 3 and sum(p.shape[0] for p in parts) == 500
        assert torch.equal(torch.cat([p.detach() for p in parts]), want.detach())
        assert torch.allclose(torch.cat([p.grad for p in parts]), want.grad, atol=1e-6), name
    # tied: one set of slices (each parameter once, the head only references them)
    n_params = sum(p.numel() for p in got.parameters())
    assert n_params == sum(p.numel() for p in ref.parameters())
    # every other gradient is unchanged too
    other = {n: p.grad for n, p in ref.named_parameters() if "embed_tokens" not in n and "lm_head" not in n}
    mine = dict(got.named_parameters())
    for n, g in other.items():
        assert torch.allclose(mine[n].grad, g, atol=1e-6), n


def test_chunked_loss_runs_over_the_sliced_head():
    ref = tiny(True)
    got = copy.deepcopy(ref)
    chunk_vocab(got, 4)
    ids, labels = batch()
    s1, n1 = labelled_ce(ref, ids, labels, 7)
    s2, n2 = labelled_ce(got, ids, labels, 7)
    assert n1 == n2 and torch.allclose(s1, s2, atol=1e-4)


def test_frozen_embedding_stays_frozen():
    m = tiny(True)
    m.get_input_embeddings().weight.requires_grad_(False)
    chunk_vocab(m, 2)
    assert all(not s.weight.requires_grad for s in m.get_input_embeddings().slices)


def test_config_wants_zero3_and_the_estimate_counts_one_slice():
    from rayft.train.memory import ModelShape, estimate

    base = {"data": {"path": "x.jsonl", "max_seq_len": 128}, "scaling": {"num_workers": 4}}
    with pytest.raises(ConfigError, match="train.vocab_chunks=8 needs train.strategy=zero3"):
        from_dict(TrainConfig, {**base, "train": {"method": "full", "strategy": "zero2", "vocab_chunks": 8}})
    # Qwen2.5-0.5B's shape (shape.py on its config): the tied embedding is the largest parameter
    shape = ModelShape(n_params=494_032_768, largest_param=136_134_656, layer_params=14_912_384, vocab=151_936,
                       hidden=896, intermediate=4864, layers=24, heads=14, lora_params=0,
                       embed_params=136_134_656, largest_non_embed=4_358_144)
    t = {"method": "full", "strategy": "zero3", "offload_optimizer": "nvme", "batch_size": 1,
         "gradient_checkpointing": True}
    whole = estimate(from_dict(TrainConfig, {**base, "train": t}), shape).parts
    sliced = estimate(from_dict(TrainConfig, {**base, "train": {**t, "vocab_chunks": 8}}), shape).parts
    one = -(-151_936 // 8) * 896
    assert sliced["gathered"] == (2 * one + 14_912_384) * 4
    assert whole["gathered"] == (2 * 136_134_656 + 14_912_384) * 4
    # nvme swap buffers: 4 x (weights, grads, 2 moments) of the largest sub-group, which is the
    # embedding's partition when whole, else sub_group_size elements of this rank's partitions
    from rayft.train.deepspeed import CPU_SUB_GROUP_SIZE
    assert whole["optimizer"] == 16 * 136_134_656 / 4 and sliced["optimizer"] == 16 * CPU_SUB_GROUP_SIZE
    assert sliced["weights"] == whole["weights"] and sliced["grads"] == whole["grads"]


def test_lora_model_slices_its_base_and_keeps_the_adapter_gradients():
    """train.method=lora + zero3: the slices go into the base model inside peft's wrapper; the
    frozen embedding stays frozen and the adapter's gradients are unchanged."""
    from peft import LoraConfig, get_peft_model

    def lora(m):
        torch.manual_seed(2)
        m = get_peft_model(m, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        for n, p in m.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.05)
        return m

    ref = lora(tiny(True))
    got = copy.deepcopy(ref)
    chunk_vocab(got, 3)
    assert isinstance(got.get_base_model().get_input_embeddings(), VocabChunkedEmbedding)
    ids, labels = batch()
    a, b = ref(input_ids=ids, labels=labels), got(input_ids=ids, labels=labels)
    assert torch.allclose(a.loss, b.loss, atol=1e-6)
    a.loss.backward()
    b.loss.backward()
    want = {n: p.grad for n, p in ref.named_parameters() if p.requires_grad}
    have = {n: p.grad for n, p in got.named_parameters() if p.requires_grad}
    assert sorted(want) == sorted(have) and want
    for n in want:
        assert torch.allclose(have[n], want[n], atol=1e-6), n
