"""OpenAI request validation and response shapes for /v1/chat/completions and /v1/completions.

Pure functions (no Ray, no torch). Validation errors are ``ApiError``s carrying the HTTP
status and an OpenAI-style error body, so an unmodified ``openai`` client raises its usual
``BadRequestError`` / ``NotFoundError`` / ``AuthenticationError`` with our message.

Differences from OpenAI, on purpose: ``temperature`` defaults to 0 (greedy, reproducible
answers) and ``n`` must be 1. ``stream=true`` sends the text as it is generated (``Stream``: OpenAI chunks as
server-sent events, ending with ``data: [DONE]``).
"""
from __future__ import annotations

import json
import math
import time
import uuid

MAX_BODY = 1 << 20
MAX_DEPTH = 32  # JSON nesting; a chat request needs 4 (body > messages > message > content part)
MAX_INT_DIGITS = 20  # int64 has 19 digits (+ sign)
MIN_TEMPERATURE = 1e-3  # below this, logits / temperature overflow float32: treated as greedy (0)
SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.manual_seed accepts
ROLES = ("system", "user", "assistant")


class ApiError(Exception):
    """An HTTP error with an OpenAI-shaped body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.retry_after = retry_after

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict:
        h = {}
        if self.status == 401:
            h["WWW-Authenticate"] = "Bearer"
        if self.status in (429, 503):
            h["Retry-After"] = str(self.retry_after or 1)
        return h

    def response(self):
        from fastapi.responses import JSONResponse
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers())


def _bad_constant(name: str):
    raise ApiError(400, f"request body is not valid JSON: {name} is not a JSON number")


def _int(s: str) -> int:
    if len(s) > MAX_INT_DIGITS:
        raise ApiError(400, f"request body has an integer with {len(s)} digits (at most {MAX_INT_DIGITS})")
    return int(s)


def _float(s: str) -> float:
    v = float(s)
    if not math.isfinite(v):
        raise ApiError(400, f"request body has a number out of range ({s[:20]})")
    return v


def _check_tree(body) -> None:
    """Iteratively: nesting depth <= MAX_DEPTH and every string (keys too) is valid Unicode
    (no lone surrogates such as "\\ud800", which the tokenizer cannot encode)."""
    stack = [(body, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(400, "request body has a string that is not valid Unicode (lone surrogate)") from None
            continue
        if depth > MAX_DEPTH:
            raise ApiError(400, f"request body is nested deeper than {MAX_DEPTH} levels")
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for kv in v.items() for x in kv)
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)


def parse_body(raw: bytes) -> dict:
    """The request's JSON object, strictly: no NaN/Infinity, no out-of-range numbers, no
    thousand-digit integers, bounded nesting, valid Unicode; anything else is a 400."""
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"request body is larger than {MAX_BODY} bytes")
    try:
        body = json.loads(raw or b"", parse_constant=_bad_constant, parse_int=_int, parse_float=_float)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    except RecursionError:
        raise ApiError(400, f"request body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:  # e.g. a number the parser cannot convert
        raise ApiError(400, f"request body is not valid JSON: {str(e)[:100]}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    _check_tree(body)
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
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
            or (kind is int and int(v) != v):
        raise ApiError(400, f"'{key}' must be a{'n integer' if kind is int else ' finite number'}", param=key)
    if not lo <= v <= hi:
        raise ApiError(400, f"'{key}' must be between {lo} and {hi}, got {v}", param=key)
    return kind(v)


def sampling(body: dict, default_max: int, limit: int) -> dict:
    """Generation parameters shared by both endpoints."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > 256:
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
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)
                             or not SEED_RANGE[0] <= seed <= SEED_RANGE[1]):
        raise ApiError(400, f"'seed' must be an integer in [{SEED_RANGE[0]}, {SEED_RANGE[1]}]", param="seed")
    temperature = _num(body, "temperature", 0.0, 2.0, 0.0)
    if temperature < MIN_TEMPERATURE:
        temperature = 0.0  # e.g. 1e-40: logits / t would be inf -> NaN probabilities; greedy is the limit
    return {"model": model.strip(), "max_tokens": _num(body, max_key, 1, limit, default_max, int),
            "temperature": temperature, "top_p": _num(body, "top_p", 0.0, 1.0, 1.0),
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


class Stream:
    """OpenAI streaming chunks (server-sent events) for one request, piece by piece: ``text``
    for each piece of generated text (the first one carries the assistant role), ``end`` with
    the finish reason and usage, then ``data: [DONE]``."""

    def __init__(self, req: dict, model: str):
        self.chat = req["kind"] == "chat"
        self.base = {"id": f"{'chatcmpl' if self.chat else 'cmpl'}-{uuid.uuid4().hex}",
                     "object": "chat.completion.chunk" if self.chat else "text_completion",
                     "created": int(time.time()), "model": model, "system_fingerprint": model}
        self.role_sent = False

    @staticmethod
    def event(obj: dict | str) -> str:
        return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"

    def _choice(self, text: str | None, finish: str | None) -> dict:
        if not self.chat:
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        delta = {} if text is None else {"content": text}
        if not self.role_sent:
            delta = {"role": "assistant", **delta}
            self.role_sent = True
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    def text(self, piece: str) -> str:
        return self.event({**self.base, "choices": [self._choice(piece, None)]})

    def end(self, out: dict) -> list[str]:
        return [self.event({**self.base, "choices": [self._choice(None, out["finish_reason"])],
                            "usage": _usage(out)}), self.event("[DONE]")]

    @staticmethod
    def error(e: ApiError) -> str:
        """An error after the response started (the status line has gone out): the openai
        client raises it as an APIError."""
        return Stream.event(e.body())


def sse_events(req: dict, out: dict, model: str) -> list[str]:
    """A whole answer as server-sent events: content chunk, final chunk, [DONE]."""
    s = Stream(req, model)
    return [s.text(out["text"]), *s.end(out)]
