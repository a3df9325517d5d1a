"""OpenAI request validation and response shapes for /v1/chat/completions and /v1/completions.

Pure functions (no Ray, no torch). Validation errors are ``ApiError``s carrying the HTTP
status and an OpenAI-style error body, so an unmodified ``openai`` client raises its usual
``BadRequestError`` / ``NotFoundError`` / ``AuthenticationError`` with our message.

Differences from OpenAI, on purpose: ``temperature`` defaults to 0 (greedy, reproducible
answers) and ``n`` must be 1. ``stream=true`` is accepted: the answer is generated whole
and sent as server-sent events (one content chunk), which streaming clients accept.
"""
from __future__ import annotations

import json
import time
import uuid

MAX_BODY = 1 << 20
ROLES = ("system", "user", "assistant")


class ApiError(Exception):
    """An HTTP error with an OpenAI-shaped body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def parse_body(raw: bytes) -> dict:
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"request body is larger than {MAX_BODY} bytes")
    try:
        body = json.loads(raw or b"")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def _content(msg: dict, i: int) -> str:
    c = msg.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # [{"type": "text", "text": ...}, ...]
        parts = []
        for p in c:
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise ApiError(400, f"messages[{i}].content: only text parts are supported", param="messages")
            parts.append(p["text"])
        return "".join(parts)
    raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", param="messages")


def _num(body: dict, key: str, lo: float, hi: float, default, kind=float):
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and int(v) != v):
        raise ApiError(400, f"'{key}' must be a{'n integer' if kind is int else ' number'}", param=key)
    if not lo <= v <= hi:
        raise ApiError(400, f"'{key}' must be between {lo} and {hi}, got {v}", param=key)
    return kind(v)


def sampling(body: dict, default_max: int, limit: int) -> dict:
    """Generation parameters shared by both endpoints."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise ApiError(400, "'model' is required: a served model line (e.g. en), line:alias, line:version, "
                            "or auto", param="model")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or len(stop) > 4
                             or not all(isinstance(s, str) and s for s in stop)):
        raise ApiError(400, "'stop' must be a string or a list of up to 4 non-empty strings", param="stop")
    if _num(body, "n", 1, 128, 1, int) != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    max_key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ApiError(400, "'seed' must be an integer", param="seed")
    return {"model": model.strip(), "max_tokens": _num(body, max_key, 1, limit, default_max, int),
            "temperature": _num(body, "temperature", 0.0, 2.0, 0.0), "top_p": _num(body, "top_p", 0.0, 1.0, 1.0),
            "stop": stop or [], "seed": seed, "stream": stream}


def parse_chat(body: dict, default_max: int, limit: int) -> dict:
    """A validated chat request: {"messages": [{"role", "content"}], ...sampling}."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "'messages' must be a non-empty list of {role, content}", param="messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}", param="messages")
        out.append({"role": m["role"], "content": _content(m, i)})
    if out[-1]["role"] != "user":
        raise ApiError(400, "the last message must have role 'user'", param="messages")
    return {"kind": "chat", "messages": out, **sampling(body, default_max, limit)}


def parse_completion(body: dict, default_max: int, limit: int) -> dict:
    """A validated completion request: {"prompt": str, ...sampling}. The prompt is used raw."""
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], str):
        p = p[0]
    if not isinstance(p, str):
        raise ApiError(400, "'prompt' must be a string (one prompt per request)", param="prompt")
    if body.get("echo"):
        raise ApiError(400, "'echo' is not supported", param="echo")
    return {"kind": "completion", "prompt": p, **sampling(body, default_max, limit)}


def request_text(req: dict) -> str:
    """The text language routing looks at: the last user message, or the prompt."""
    return req["messages"][-1]["content"] if req["kind"] == "chat" else req["prompt"]


def _usage(out: dict) -> dict:
    return {"prompt_tokens": out["prompt_tokens"], "completion_tokens": out["completion_tokens"],
            "total_tokens": out["prompt_tokens"] + out["completion_tokens"]}


def response(req: dict, out: dict, model: str) -> dict:
    """OpenAI chat.completion / text_completion object from an engine result."""
    created = int(time.time())
    if req["kind"] == "chat":
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": created,
                "model": model, "system_fingerprint": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": out["text"]},
                             "logprobs": None, "finish_reason": out["finish_reason"]}],
                "usage": _usage(out)}
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": created, "model": model,
            "system_fingerprint": model,
            "choices": [{"index": 0, "text": out["text"], "logprobs": None, "finish_reason": out["finish_reason"]}],
            "usage": _usage(out)}


def sse_events(req: dict, out: dict, model: str) -> list[str]:
    """The whole answer as server-sent events: content chunk, final chunk, [DONE]."""
    full = response(req, out, model)
    base = {k: full[k] for k in ("id", "created", "model", "system_fingerprint")}
    if req["kind"] == "chat":
        base["object"] = "chat.completion.chunk"
        chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": out["text"]},
                                        "logprobs": None, "finish_reason": None}]},
                  {**base, "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                        "finish_reason": out["finish_reason"]}], "usage": _usage(out)}]
    else:
        base["object"] = "text_completion"
        chunks = [{**base, "choices": [{"index": 0, "text": out["text"], "logprobs": None, "finish_reason": None}]},
                  {**base, "choices": [{"index": 0, "text": "", "logprobs": None,
                                        "finish_reason": out["finish_reason"]}], "usage": _usage(out)}]
    return [f"data: {json.dumps(c, ensure_ascii=False)}\n\n" for c in chunks] + ["data: [DONE]\n\n"]
