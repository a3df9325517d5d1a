"""Context blocks for served lines ("message mode", issue 20 item 5): memory injection without
training. No Ray; the gateway owns one ``Contexts``.

A line's context block is text the server puts in the system turn of every chat request for
that line (``engine.system_turn``), so a team can ship what it learned from new memories at
once and drop the block when a LoRA trained on them passes the gate. Where a line's block
comes from (first that applies):

* serve config ``context: {line: text}`` (inline),
* serve config ``context_file: {line: path or s3://... URI}``: re-read when it changes,
* the registry: ``<registry>/<line>/context.md``, set by ``rayft registry context``
  (goes with the line, survives serve restarts); absent = no block.

Files are checked at most every ``refresh_s`` (the gateway's alias refresh) by their size and
modification time and re-read when those move, so editing the file (or re-running
``rayft registry context``) changes what is served without a redeploy. A file that becomes
unreadable keeps the last good block and is reported in /health and the log (its path and
the error, never its contents); an empty file means no block. The contents are never logged.
"""
from __future__ import annotations

import logging
import os
import time

import pyarrow.fs as pafs

from ..registry.context import CONTEXT_FILE as REGISTRY_FILE
from ..registry.context import MAX_CONTEXT_BYTES as MAX_BYTES
from ..registry.context import ContextError, decode, digest

__all__ = ["REGISTRY_FILE", "ContextError", "Contexts", "decode", "digest"]
log = logging.getLogger("ray.serve")


class _Source:
    """One line's block: inline text, or a file on a pyarrow filesystem."""

    def __init__(self, kind: str, shown: str, text: str = "", fs=None, path: str = "", optional: bool = False):
        self.kind, self.shown, self.text, self.fs, self.path = kind, shown, text, fs, path
        self.optional = optional  # the registry file: absent = no block
        self.stamp: tuple | None = None  # (mtime, size) of the file last read
        self.error = ""
        self.read_at = float("-inf")

    def refresh(self) -> bool:
        """Re-read the file if it changed; True when the block changed. ContextError when the
        file cannot be read (the last good block stays)."""
        if self.kind == "inline":
            return False
        where = f"{'context_file' if self.kind == 'file' else 'registry context'}: {self.shown}"
        try:
            info = self.fs.get_file_info(self.path)
            if info.type == pafs.FileType.NotFound:
                if not self.optional:
                    raise ContextError(f"{where}: no such file")
                stamp, text = None, ""
            elif info.type != pafs.FileType.File:
                raise ContextError(f"{where}: not a file")
            else:
                stamp = (info.mtime_ns, info.size)
                if stamp == self.stamp:
                    return False
                with self.fs.open_input_stream(self.path) as f:
                    text = decode(f.read(MAX_BYTES + 1), where)
        except OSError as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ContextError(f"{where}: cannot read it ({msg[:200]})") from None
        self.stamp = stamp
        changed = text != self.text
        self.text = text
        return changed


def _file_source(spec: str) -> _Source:
    from ..objstore import filesystem, is_remote, shown

    if is_remote(spec):
        loc = filesystem(spec)
        return _Source("file", shown(spec), fs=loc.fs, path=loc.path)
    path = os.path.abspath(os.path.expanduser(spec.removeprefix("file://")))
    return _Source("file", path, fs=pafs.LocalFileSystem(), path=path)


class Contexts:
    """line -> its context block, refreshed at most every ``refresh_s``."""

    def __init__(self, lines: list[str], inline: dict[str, str], files: dict[str, str], registry: str,
                 refresh_s: float):
        from ..objstore import shown
        from ..registry import Registry

        self.refresh_s = refresh_s
        self.sources: dict[str, _Source] = {}
        for line in lines:
            if line in inline:
                self.sources[line] = _Source("inline", "serve config", text=inline[line].strip())
            elif line in files:
                self.sources[line] = _file_source(files[line])
            else:
                store = Registry(registry, line).store
                self.sources[line] = _Source("registry", f"{shown(registry)}/{line}/{REGISTRY_FILE}", fs=store.fs,
                                             path=store.path(f"{line}/{REGISTRY_FILE}"), optional=True)

    def check(self) -> None:
        """Read every block now; the first unusable file raises ContextError (at start-up)."""
        for s in self.sources.values():
            s.refresh()
            s.read_at = time.monotonic()

    def get(self, line: str) -> str:
        """The block for ``line`` ('' = none); files re-read when they changed."""
        s = self.sources.get(line)
        if s is None:
            return ""
        if s.kind != "inline" and time.monotonic() - s.read_at >= self.refresh_s:
            s.read_at = time.monotonic()
            try:
                if s.refresh():
                    log.info(f"rayft: {line}: context block now {digest(s.text)} ({len(s.text)} chars) "
                             f"from {s.shown}")
                s.error = ""
            except ContextError as e:
                if str(e) != s.error:
                    log.error(f"rayft: {line}: {e}; still serving the last context block read")
                s.error = str(e)
        return s.text

    def status(self) -> dict:
        """Per line: where the block comes from, its digest and size (never its text)."""
        out = {}
        for line, s in self.sources.items():
            if s.text or s.kind != "registry" or s.error:
                out[line] = {"source": s.shown, "chars": len(s.text),
                             "sha256": digest(s.text) if s.text else None} | ({"error": s.error} if s.error else {})
        return out
