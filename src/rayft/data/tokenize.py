"""Pairs -> token ids with loss only on the response (pure; used inside Ray Data tasks).

Which tokens carry loss (``data.train_on``):

* ``last`` (default, what rayft always did): the final assistant reply only. For a plain
  pair that is ``response``; for a tool-calling conversation it is every assistant
  message after the last user turn, so the tool-call turns that lead to the answer are
  learned too. Tool results (``tool`` messages) never carry loss.
* ``all_assistant``: every assistant turn of the conversation (history included), each
  with its own mask; user, system and tool turns carry none.

Rendering: the tokenizer's chat template, given the tools (``apply_chat_template(...,
tools=...)``) when the template uses them. Otherwise the documented fallback: the tool
schemas go into the system message (``FALLBACK_TOOLS_HEADER`` then one JSON schema per
line inside ``<tools>``), an assistant tool call is rendered as ``<tool_call>\n{"name": ...,
"arguments": {...}}\n</tool_call>`` after its text, and tool results become a user turn
``<tool_response>\n...\n</tool_response>`` (consecutive results joined), i.e. the
Hermes/Qwen convention, rendered with the tokenizer's plain chat template (or
``role: content`` lines when it has none). Each assistant turn is its own segment
(tokenized separately, like prompt and response), so mask boundaries are exact.
"""
from __future__ import annotations

import functools
import json

import numpy as np
import pyarrow as pa

IGNORE = -100
TRAIN_ON = ("last", "all_assistant")
FALLBACK_TOOLS_HEADER = ("You can call these tools. To call one, answer with <tool_call>{\"name\": ..., "
                         "\"arguments\": {...}}</tool_call>; its result comes back in <tool_response>.")


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


class TemplateError(ValueError):
    """The conversation cannot be rendered with this tokenizer (a reject reason)."""


def _supports_tools(tok) -> bool:
    tmpl = getattr(tok, "chat_template", None)
    if isinstance(tmpl, dict):
        return "tool_use" in tmpl or any("tools" in t for t in tmpl.values())
    return bool(tmpl) and "tools" in tmpl


def _call_text(c: dict) -> str:
    fn = c["function"]
    return "<tool_call>\n" + json.dumps({"name": fn["name"], "arguments": fn["arguments"]}, ensure_ascii=False) \
        + "\n</tool_call>"


def fallback_messages(msgs: list[dict], tools: list[dict]) -> list[dict]:
    """Tool conversation -> plain {role, content} messages (the documented fallback)."""
    return [{"role": m["role"], "content": m["content"]} for m in _fallback(msgs, tools)]


def _fallback(msgs: list[dict], tools: list[dict]) -> list[dict]:
    out: list[dict] = []
    if tools:
        schema = "\n".join(json.dumps(t.get("function", t), ensure_ascii=False) for t in tools)
        block = f"{FALLBACK_TOOLS_HEADER}\n<tools>\n{schema}\n</tools>"
        if msgs and msgs[0]["role"] == "system":
            out.append({"role": "system", "content": msgs[0]["content"] + "\n\n" + block})
            msgs = msgs[1:]
        else:
            out.append({"role": "system", "content": block})
    for m in msgs:
        if m["role"] == "tool":
            resp = f"<tool_response>\n{m['content']}\n</tool_response>"
            if out and out[-1].get("_tool"):
                out[-1]["content"] += "\n" + resp
            else:
                out.append({"role": "user", "content": resp, "_tool": True})
        elif m.get("tool_calls"):
            parts = ([m["content"]] if m["content"] else []) + [_call_text(c) for c in m["tool_calls"]]
            out.append({"role": "assistant", "content": "\n".join(parts)})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out


def row_messages(system: str, history: str, prompt: str, response: str,
                 messages: str = "", tools: str = "") -> tuple[list[dict], list[dict]]:
    """A canonical row -> (full message list with the system turn, tool schemas)."""
    msgs = [{"role": "system", "content": system}] if system else []
    if messages:
        msgs.extend(json.loads(messages))
    else:
        msgs.extend(json.loads(history) if history else [])
        msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    return msgs, (json.loads(tools) if tools else [])


def _segments(tok, msgs: list[dict], tools: list[dict], mode: str) -> tuple[list[tuple[str, int]], list[str]]:
    """Rendered conversation as (text, index of the assistant message or -1) segments
    whose concatenation is the whole rendering (each assistant turn, its text and the
    template's end-of-turn, is one segment), and the roles of the rendered messages
    ("tool" for tool results). ``mode``: native (template with tools) | template | plain."""
    if mode == "native":
        render_msgs, kw = msgs, {"tools": tools} if tools else {}
        roles = [m["role"] for m in msgs]
    else:
        fb = _fallback(msgs, tools)
        roles = ["tool" if m.get("_tool") else m["role"] for m in fb]
        render_msgs = [{"role": m["role"], "content": m["content"]} for m in fb]
        kw = {} if mode == "template" else None
    if kw is None:  # no chat template: "role: content" lines, EOS after each answer
        segs, eos = [], tok.eos_token or ""
        for m in render_msgs:
            if m["role"] == "assistant":
                segs += [("assistant: ", -1), (m["content"] + eos, 1), ("\n", -1)]
            else:
                segs.append((f"{m['role']}: {m['content']}\n", -1))
        return segs, roles

    def render(ms, gen):
        try:
            return tok.apply_chat_template(ms, tokenize=False, add_generation_prompt=gen, **kw)
        except Exception as e:  # jinja TemplateError, a template's raise_exception(...)
            raise TemplateError(f"chat template cannot render this conversation: {e}") from None

    segs, done = [], ""
    for k, m in enumerate(render_msgs):
        if m["role"] != "assistant":
            continue
        before, after = render(render_msgs[:k], True), render(render_msgs[: k + 1], False)
        if not (before.startswith(done) and after.startswith(before)):
            raise TemplateError("chat template output is not incremental (a later turn rewrites an earlier "
                                "one), so per-turn loss masks cannot be placed")
        segs += [(before[len(done):], -1), (after[len(before):], k)]
        done = after
    full = render(render_msgs, False)
    if full.startswith(done) and len(full) > len(done):
        segs.append((full[len(done):], -1))
    return segs, roles


def render_modes(tok) -> list[str]:
    """Renderings to try, best first: the template with the tools when it takes them,
    the template with the fallback messages, then plain lines."""
    tmpl = getattr(tok, "chat_template", None)
    if not tmpl:
        return ["plain"]
    return (["native"] if _supports_tools(tok) else []) + ["template", "plain"]


def encode_row(tok, system: str, history: str, prompt: str, response: str, max_seq_len: int,
               messages: str = "", tools: str = "", train_on: str = "last") -> tuple[list[int], list[int], bool]:
    """(input_ids, labels, truncated) for any canonical row; see the module doc for what
    carries loss. A plain pair with ``train_on=last`` is exactly ``encode_pair``."""
    if train_on not in TRAIN_ON:
        raise ValueError(f"data.train_on: expected one of {', '.join(TRAIN_ON)}, got {train_on!r}")
    if not messages and train_on == "last":
        return encode_pair(tok, system, history, prompt, response, max_seq_len)
    msgs, tl = row_messages(system, history, prompt, response, messages, tools)
    for mode in render_modes(tok):
        try:
            segs, roles = _segments(tok, msgs, tl, mode)
            break
        except TemplateError:  # e.g. a template that refuses a role or rewrites earlier turns
            continue
    asst = [k for _, k in segs if k >= 0]
    if train_on == "last":  # the assistant turns after the last user turn (not counting tool results)
        last_user = max((i for i, r in enumerate(roles) if r == "user"), default=-1)
        learn = {k for k in asst if k > last_user}
    else:
        learn = set(asst)
    ids, labels, final_start = [], [], None
    first_final = min(learn) if train_on == "last" and learn else (max(learn) if learn else None)
    for text, k in segs:
        if not text:
            continue
        piece = tok(text, add_special_tokens=False)["input_ids"]
        if k == first_final and final_start is None:
            final_start = len(ids)
        ids += piece
        labels += piece if k in learn else [IGNORE] * len(piece)
    truncated = len(ids) > max_seq_len
    if truncated:  # as encode_pair: keep the start of the final reply, trim the context from the left
        p = final_start if final_start is not None else len(ids)
        keep_resp = min(len(ids) - p, max(max_seq_len // 2, max_seq_len - p))
        keep_prompt = max_seq_len - keep_resp
        ids = ids[p - keep_prompt: p] + ids[p: p + keep_resp]
        labels = labels[p - keep_prompt: p] + labels[p: p + keep_resp]
    return ids, labels, truncated


def tokenize_batch(batch: pa.Table, source: str, max_seq_len: int, system_prompt: str = "",
                   trust_remote_code: bool = False, train_on: str = "last") -> pa.Table:
    """Ray Data ``map_batches`` function: PAIRS_SCHEMA rows -> input_ids/labels rows."""
    tok = _tokenizer(source, trust_remote_code)
    cols = batch.to_pydict()
    n = batch.num_rows
    msgs_col = cols.get("messages") or [""] * n
    tools_col = cols.get("tools") or [""] * n
    ids_col, lab_col, trunc, ntok = [], [], [], []
    for sys_, hist, p, r, m, tl in zip(cols["system"], cols["history"], cols["prompt"], cols["response"],
                                       msgs_col, tools_col):
        ids, labels, t = encode_row(tok, sys_ or system_prompt, hist or "", p, r, max_seq_len,
                                    m or "", tl or "", train_on)
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
