"""Request model id -> (model line, registry version). No Ray; the gateway owns one Router.

Accepted ids: ``en`` (its champion), ``en:champion``, ``en:previous``, ``en:v1763856000_ab12``,
a bare version id (looked up in every served line), a bare alias or ``auto`` (line chosen
by the prompt's language through ``languages``, else ``default_model``).

Which versions are served: the champion and previous aliases, and versions whose gate
decision was accept ("promote" in the manifest's eval); a version the gate rejected (or
that was never evaluated) is refused with 403 unless ``allow_unpromoted_versions``. A
version id is checked against the registry's VERSION_RE and then looked up directly (one
manifest read per served line, cached when found): an unknown id never lists the registry.

Hot swap: aliases are re-read at most every ``refresh_s``. A changed champion is not
served until the gateway has loaded it (``mark_ready``); until then the previous
champion keeps answering, so a promote never makes a request wait on or fail a load.
"""
from __future__ import annotations

import time

from ..data.records import detect_language
from ..registry import ALIASES, Registry, RegistryError
from ..registry.registry import VERSION_RE
from .openai_api import ApiError


class Router:
    def __init__(self, uri: str, lines: list[str], languages: dict, default: str, refresh_s: float,
                 allow_unpromoted: bool = False):
        self.regs = {line: Registry(uri, line) for line in lines}
        self.allow_unpromoted = allow_unpromoted
        self.manifests: dict[tuple[str, str], dict] = {}  # versions are immutable: cache found ones
        self.languages, self.default, self.refresh_s = languages, default or lines[0], refresh_s
        self.aliases: dict[str, dict] = {}
        self.read_at: dict[str, float] = {}
        self.serving: dict[str, str | None] = {}
        for line in lines:
            self._read(line)
            self.serving[line] = self.aliases[line].get("champion")

    def _read(self, line: str) -> dict:
        try:
            self.aliases[line] = self.regs[line].aliases()
        except (OSError, ValueError) as e:  # keep serving the last good view on a storage hiccup
            self.aliases.setdefault(line, {"champion": None, "previous": None, "error": str(e)})
        self.read_at[line] = time.monotonic()
        return self.aliases[line]

    def pending(self) -> dict[str, str]:
        """Lines whose champion alias moved to a version not yet serving: {line: version}."""
        out = {}
        for line in self.regs:
            if time.monotonic() - self.read_at[line] >= self.refresh_s:
                self._read(line)
            champ = self.aliases[line].get("champion")
            if champ and champ != self.serving[line]:
                out[line] = champ
        return out

    def mark_ready(self, line: str, version: str) -> None:
        """The gateway loaded ``version``; serve it if it is still the champion."""
        if self.aliases[line].get("champion") == version:
            self.serving[line] = version

    def _line_for(self, text: str) -> str:
        return self.languages.get(detect_language(text), self.default)

    def manifest(self, line: str, version: str) -> dict | None:
        """The manifest of ``line``/``version``, or None; a direct lookup, never a listing."""
        m = self.manifests.get((line, version))
        if m is not None or not VERSION_RE.match(version):
            return m
        reg = self.regs[line]
        try:
            if not reg.store.exists(f"{reg._vdir(version)}/manifest.json"):
                return None
            m = reg.get(version)
        except (RegistryError, OSError, ValueError):
            return None
        self.manifests[(line, version)] = m
        return m

    def _exists(self, line: str, version: str) -> bool:
        return self.manifest(line, version) is not None

    def _servable(self, line: str, version: str, model: str) -> None:
        """403 unless ``version`` is an alias target or passed the gate (or the config allows it)."""
        a = self.aliases[line]
        if self.allow_unpromoted or version in (a.get("champion"), a.get("previous"), self.serving[line]):
            return
        decision = ((self.manifest(line, version) or {}).get("eval") or {}).get("decision")
        if decision != "promote":
            raise ApiError(403, f"model {model!r}: {line}:{version} did not pass the gate "
                                f"({decision or 'never evaluated'}) and is not champion or previous; the server "
                                "does not serve it (serve config allow_unpromoted_versions=true allows it)",
                           "permission_error", param="model", code="model_not_servable")

    def resolve(self, model: str, text: str) -> tuple[str, str]:
        """(line, version) for a request, or ApiError 404 with the accepted forms."""
        lines = list(self.regs)
        if model == "auto" or model in ALIASES:
            line, ref = self._line_for(text), ("champion" if model == "auto" else model)
        elif ":" in model:
            line, ref = model.split(":", 1)
        elif model in self.regs:
            line, ref = model, "champion"
        elif VERSION_RE.match(model):
            line = next((ln for ln in lines if self._exists(ln, model)), None)
            if line is None:
                raise ApiError(404, f"model {model!r}: no such version in {', '.join(lines)}", param="model",
                               code="model_not_found")
            self._servable(line, model, model)
            return line, model
        else:
            line, ref = None, None
        if line not in self.regs:
            model = model if len(model) <= 80 else model[:80] + "..."
            raise ApiError(404, f"model {model!r} does not exist; use one of {', '.join(lines)}, "
                                f"<line>:champion|previous|<version>, a version id, or auto", param="model",
                           code="model_not_found")
        if ref == "champion":
            v = self.serving[line]
        elif ref in ALIASES:
            v = self.aliases[line].get(ref)
        elif self._exists(line, ref):
            self._servable(line, ref, model)
            v = ref
        else:
            raise ApiError(404, f"model {line}:{ref[:80]!r}: {line} has no version or alias with that name",
                           param="model", code="model_not_found")
        if not v:
            raise ApiError(404, f"model {model!r}: alias {ref} of {line} is not set", param="model",
                           code="model_not_found")
        return line, v

    def status(self) -> dict:
        return {line: {"champion": self.aliases[line].get("champion"), "previous": self.aliases[line].get("previous"),
                       "serving": self.serving[line]} for line in self.regs}
