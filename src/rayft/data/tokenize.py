"""Pairs -> token ids with loss only on the response (pure; used inside Ray Data tasks)."""
from __future__ import annotations

import functools
import json

import numpy as np
import pyarrow as pa

IGNORE = -100


@functools.lru_cache(maxsize=4)
def _tokenizer(source: str, trust_remote_code: bool):
    from ..models.load import load_tokenizer
    return load_tokenizer(source, trust_remote_code)


def build_messages(system: str, history: str, prompt: str) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    msgs.extend(json.loads(history) if history else [])
    msgs.append({"role": "user", "content": prompt})
    return msgs


def prompt_text(tok, system: str, history: str, prompt: str) -> str:
    """The text the model sees before its answer: chat template when the tokenizer has one."""
    msgs = build_messages(system, history, prompt)
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    lines = [f"{m['role']}: {m['content']}" for m in msgs]
    return "\n".join(lines) + "\nassistant: "


def encode_pair(tok, system: str, history: str, prompt: str, response: str,
                max_seq_len: int) -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, truncated). Labels are IGNORE on prompt tokens.

    Prompt and response are tokenized separately and concatenated so the boundary is
    exact whatever the template; the response ends with the tokenizer's EOS (the chat
    template's end-of-turn token where it is the EOS) so the model learns to stop.
    """
    p_ids = tok(prompt_text(tok, system, history, prompt), add_special_tokens=False)["input_ids"]
    r_ids = tok(response, add_special_tokens=False)["input_ids"]
    if tok.eos_token_id is not None:
        r_ids = r_ids + [tok.eos_token_id]
    ids = p_ids + r_ids
    labels = [IGNORE] * len(p_ids) + r_ids
    truncated = len(ids) > max_seq_len
    if truncated:
        # keep at least a few response tokens: trim the prompt from the left first
        keep_resp = min(len(r_ids), max(max_seq_len // 2, max_seq_len - len(p_ids)))
        keep_prompt = max_seq_len - keep_resp
        ids = p_ids[len(p_ids) - keep_prompt:] + r_ids[:keep_resp]
        labels = [IGNORE] * keep_prompt + r_ids[:keep_resp]
    return ids, labels, truncated


def tokenize_batch(batch: pa.Table, source: str, max_seq_len: int, system_prompt: str = "",
                   trust_remote_code: bool = False) -> pa.Table:
    """Ray Data ``map_batches`` function: PAIRS_SCHEMA rows -> input_ids/labels rows."""
    tok = _tokenizer(source, trust_remote_code)
    cols = batch.to_pydict()
    ids_col, lab_col, trunc, ntok = [], [], [], []
    for sys_, hist, p, r in zip(cols["system"], cols["history"], cols["prompt"], cols["response"]):
        ids, labels, t = encode_pair(tok, sys_ or system_prompt, hist or "", p, r, max_seq_len)
        ids_col.append(np.asarray(ids, dtype=np.int32))
        lab_col.append(np.asarray(labels, dtype=np.int32))
        trunc.append(t)
        ntok.append(len(ids))
    return pa.table({
        "row_idx": pa.array(cols["row_idx"], pa.int64()),
        "input_ids": pa.array(ids_col, pa.list_(pa.int32())),
        "labels": pa.array(lab_col, pa.list_(pa.int32())),
        "n_tokens": pa.array(ntok, pa.int32()),
        "truncated": pa.array(trunc, pa.bool_()),
    })


def collate(examples: list[tuple[np.ndarray, np.ndarray]], pad_id: int):
    """Right-pad a micro-batch to its longest example -> torch tensors."""
    import torch

    n = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), n), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), n), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), n), dtype=torch.long)
    for i, (ids, lab) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[i, : len(lab)] = torch.tensor(lab, dtype=torch.long)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}
