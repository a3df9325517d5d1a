"""Sequence packing (``data.packing: true``): several tokenized examples in one row of up to
``max_seq_len`` tokens, each attending only to itself.

* **Which examples share a row**: greedy first-fit over a fixed, seeded order of the worker's
  rows (``pack_order``): each example goes into the first open row with room for it. Pure and
  deterministic, computed once per worker; the loop then walks a seeded per-epoch permutation
  of the packed rows, so a resumed run sees the same micro-batches (exact resume holds).
* **Attention confined to each example**: the packed row carries ``position_ids`` that restart
  at 0 for every example, no 2-D ``attention_mask``, and ``use_cache=False``. transformers
  (``masking_utils.find_packed_sequence_indices``, since 4.54) reads example boundaries off the
  position ids and builds the block-diagonal causal mask for sdpa / eager / flex attention; with
  flash-attention 2/3 the same position ids drive the varlen kernels. This is the format of
  transformers' own ``DataCollatorWithFlattening``, but per row (several packed rows per
  micro-batch, right-padded; the padding is a segment of its own, after every example).
  ``use_cache=False`` matters: with a cache object transformers skips the packed-sequence
  detection and would let examples see each other. ``check_isolation`` proves on the live
  model that a packed example's logits equal its logits alone (run by every worker at start).
* **Loss**: labels as unpacked (response tokens only), plus the first token of every example
  set to IGNORE: it would otherwise be the target of the previous example's last token. Alone,
  an example's first label is never a target either (the causal shift drops it), so the loss
  terms of a packed row are exactly those of its examples.
"""
from __future__ import annotations

import numpy as np

from .tokenize import IGNORE

Pack = tuple  # (input_ids, labels, position_ids): int arrays of one length; the indices of its examples


def first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Greedy first-fit: indices of ``lengths`` (in the given order) grouped into bins of at most
    ``capacity``; each item goes into the lowest-numbered bin with room. O(n log n) with a
    max segment tree over the bins' free space. An item longer than ``capacity`` gets a bin of
    its own (callers truncate to ``capacity`` first)."""
    size = 1
    while size < max(1, len(lengths)):
        size *= 2
    free = [0] * (2 * size)  # leaves: free space of bin i (0 = not opened yet; opened on demand)
    bins: list[list[int]] = []
    for i, n in enumerate(lengths):
        if free[1] >= n and n > 0:  # some open bin fits: descend to the leftmost one that does
            k = 1
            while k < size:
                k = 2 * k if free[2 * k] >= n else 2 * k + 1
            b = k - size
        else:
            b = len(bins)
            bins.append([])
            k = size + b
            free[k] = capacity
        bins[b].append(i)
        free[k] = max(0, free[k] - n)
        k //= 2
        while k:
            free[k] = max(free[2 * k], free[2 * k + 1])
            k //= 2
    return bins


def pack_order(n: int, seed: int) -> np.ndarray:
    """The fixed order first-fit walks a worker's rows in (sorted by row index): a permutation
    seeded by ``seed`` alone, so every run, fresh or resumed, packs the same rows together."""
    return np.random.default_rng(seed).permutation(n)


def pack_examples(examples: list[tuple[np.ndarray, np.ndarray]], capacity: int, seed: int) -> list[Pack]:
    """[(input_ids, labels)] -> packed rows ``(input_ids, labels, position_ids, example indices)``."""
    order = pack_order(len(examples), seed)
    bins = first_fit([len(examples[i][0]) for i in order], capacity)
    out = []
    for b in bins:
        members = [examples[order[j]] for j in b]
        ids = np.concatenate([np.asarray(e[0], dtype=np.int64) for e in members])
        labels = np.concatenate([np.asarray(e[1], dtype=np.int64) for e in members])
        starts = np.cumsum([0] + [len(e[0]) for e in members[:-1]])
        labels[starts] = IGNORE
        pos = np.concatenate([np.arange(len(e[0]), dtype=np.int64) for e in members])
        out.append((ids, labels, pos, [int(order[j]) for j in b]))
    return out


def collate_packed(packs: list[Pack], pad_id: int) -> dict:
    """Right-pad packed rows to the longest -> {input_ids, labels, position_ids, use_cache=False}.
    The padding's position ids restart at 0 (a segment of its own; its labels are IGNORE)."""
    import torch

    n = max(len(p[0]) for p in packs)
    input_ids = torch.full((len(packs), n), pad_id, dtype=torch.long)
    labels = torch.full((len(packs), n), IGNORE, dtype=torch.long)
    pos = torch.zeros((len(packs), n), dtype=torch.long)
    for i, p in enumerate(packs):
        k = len(p[0])
        input_ids[i, :k] = torch.from_numpy(np.asarray(p[0], dtype=np.int64))
        labels[i, :k] = torch.from_numpy(np.asarray(p[1], dtype=np.int64))
        pos[i, :k] = torch.from_numpy(np.asarray(p[2], dtype=np.int64))
        pos[i, k:] = torch.arange(n - k)
    return {"input_ids": input_ids, "labels": labels, "position_ids": pos, "use_cache": False}


class PackingError(RuntimeError):
    """The model does not confine attention to each packed example."""


def check_isolation(model, device, vocab_size: int, atol: float = 1e-4) -> float:
    """Run two short examples packed in one row and each alone; raise ``PackingError`` unless
    the packed logits equal the lone ones (max abs difference <= ``atol``). Returns the
    difference. Cheap (three forwards of a few tokens, no gradients, dropout off)."""
    import torch

    rng = np.random.default_rng(0)
    a, b = rng.integers(3, min(vocab_size, 1000), 5), rng.integers(3, min(vocab_size, 1000), 4)
    packs = [(np.concatenate([a, b]), np.full(9, IGNORE), np.concatenate([np.arange(5), np.arange(4)]), [0, 1])]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            batch = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in collate_packed(packs, 0).items()}
            batch.pop("labels")
            packed = model(**batch).logits.float()
            alone = [model(input_ids=torch.as_tensor(x, dtype=torch.long, device=device)[None]).logits.float()
                     for x in (a, b)]
    finally:
        model.train(was_training)
    diff = max(float((packed[0, :5] - alone[0][0]).abs().max()), float((packed[0, 5:] - alone[1][0]).abs().max()))
    if not diff <= atol:
        raise PackingError(f"data.packing: this model lets packed examples attend to each other (logits differ "
                           f"by {diff:.3g}); it needs transformers' packed-sequence masking (transformers>=4.54, "
                           "a model using masking_utils) - set data.packing=false")
    return diff

