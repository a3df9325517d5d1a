"""A model line's context block in the registry (``<line>/context.md``): text ``rayft serve``
puts in the system turn of every chat request for the line ("message mode", memory injection
without training; see ``rayft.serve.context``). It belongs to the line, not to a version, so it
survives serve restarts and every server of the line picks it up within its alias refresh.

Written with the registry Store's atomic write (temp + fsync + rename on local disks, one PUT
on object stores); every change leaves an event (digest and size, never the text).
"""
from __future__ import annotations

import hashlib

from .lineage import RegistryError

MAX_CONTEXT_BYTES = 256 * 1024
CONTEXT_FILE = "context.md"


class ContextError(ValueError):
    """A context block that cannot be used (one line naming the file)."""


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def info(text: str) -> dict | None:
    """{"sha256", "chars"} of a block, None for no block."""
    return {"sha256": digest(text), "chars": len(text)} if text else None


def decode(data: bytes, where: str) -> str:
    """A context block from a file's bytes: UTF-8 text, at most MAX_CONTEXT_BYTES, trimmed."""
    if len(data) > MAX_CONTEXT_BYTES:
        raise ContextError(f"{where}: context block is over {MAX_CONTEXT_BYTES} bytes (it goes into every "
                           "prompt: keep it to what the model needs)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ContextError(f"{where}: not UTF-8 text (byte {e.start})") from None
    if "\x00" in text:
        raise ContextError(f"{where}: not a text file (NUL byte)")
    return text.strip()


def context_info(reg) -> dict | None:
    """{"sha256", "chars"} of the line's block, or None when it has none."""
    rel = f"{reg.name}/{CONTEXT_FILE}"
    try:
        if not reg.store.exists(rel):
            return None
        text = decode(reg.store.read_bytes(rel), reg.store.path(rel))
    except OSError as e:
        raise RegistryError(f"{reg.store.path(rel)}: cannot read it ({str(e).splitlines()[0][:200]})") from None
    except ContextError as e:
        raise RegistryError(str(e)) from None
    return info(text)


def set_context(reg, text: str) -> dict:
    """Replace the line's block with ``text`` ('' removes it); returns context_info."""
    text = text.strip()
    if len(text.encode()) > MAX_CONTEXT_BYTES:
        raise RegistryError(f"context block is over {MAX_CONTEXT_BYTES} bytes")
    reg.require_exists()
    rel = f"{reg.name}/{CONTEXT_FILE}"
    with reg._lock():
        if text:
            reg.store.write_atomic(rel, text.encode("utf-8"))
            reg._event("context", sha256=digest(text), chars=len(text))
        else:
            reg.store.delete_file(rel)
            reg._event("context", cleared=True)
    return info(text)
