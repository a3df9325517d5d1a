"""Typed, documented configs with YAML files and ``key=value`` overrides, on pydantic v2.

A stage's config is a tree of :class:`Section` models (pydantic ``BaseModel``; unknown keys
are refused, assignments are validated). Fields are declared with :func:`opt` and nested
sections with :func:`section`::

    class ScalingCfg(Section):
        num_workers: int = opt(2, "Ray Train workers", ge=1)

    class TrainConfig(Section):
        scaling: ScalingCfg = section(ScalingCfg, "Ray Train workers and failures")

Enumerations are ``Literal``s, ranges are ``opt(..., ge=/gt=/le=/lt=)`` and cross-field rules
are ``@model_validator(mode="after")`` methods raising :class:`ConfigError`. Checks that only
make sense for a complete stage config (``data.path is required``) test :func:`complete`
so ``TrainConfig()`` still builds its defaults.

:func:`load` reads a YAML file (``defaults:`` layers other files under it) plus
``key=value`` overrides, parsed by the type of the field they set (a ``str`` field takes
the text as written). Every problem is one :class:`ConfigError` line naming where it came
from (file:line or the command line) and the dotted key. Configs cross the Ray boundary as
plain dicts: :func:`to_dict` and :func:`from_dict`.

Stdlib ``@dataclass`` configs declared with :func:`opt` are still loaded (validated by
pydantic, their ``validate()`` called) while they are being converted to :class:`Section`.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import re
import types
import typing
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, TypeAdapter, ValidationError, ValidationInfo, model_validator
from pydantic_core import PydanticCustomError

T = TypeVar("T")

__all__ = ["ConfigError", "StageRefused", "Section", "opt", "section", "complete", "load", "from_dict",
           "to_dict", "read_yaml", "parse_overrides", "parse_value", "deep_merge", "describe", "help_text",
           "mask_secrets", "saved_config", "saved_command", "is_secret_name", "field_type", "coerce", "leaves", "check_keys", "format_error",
           "LocalPath", "FsPath", "check_location", "uri_scheme", "PYARROW_SCHEMES"]



class ConfigError(ValueError):
    """A config file or override that cannot be used; the message (one line) says why."""


class StageRefused(Exception):
    """A stage ran to the end but its answer is "no" (e.g. the gate rejected the candidate):
    the CLI prints ``result`` (the report's path) as usual, the message, and exits ``code``,
    so ``rayft eval ... && deploy`` stops there."""

    def __init__(self, message: str, result: str, code: int = 3):
        super().__init__(message)
        self.result, self.code = result, code


# --------------------------------------------------------------------------------------
# declaring configs

_CONSTRAINTS = ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern", "multiple_of")


def opt(default: Any, help: str, **constraints: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A config field: its default, its help text and optional pydantic constraints
    (``ge``/``gt``/``le``/``lt``, ``min_length``...). Lists and dicts are copied per instance.

    Returned as a ``dataclasses.field`` whose metadata are pydantic ``Field`` arguments:
    pydantic turns it into ``Field(default | default_factory, description=help, **constraints)``
    inside a :class:`Section`, and a stdlib ``@dataclass`` still accepts it.
    """
    bad = set(constraints) - set(_CONSTRAINTS)
    if bad:
        raise TypeError(f"opt(): unknown constraint(s) {sorted(bad)}; use one of {_CONSTRAINTS}")
    meta = {"description": help, **constraints}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: copy.deepcopy(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type, help: str) -> Any:  # noqa: A002
    """A nested section: ``Field(default_factory=cls, description=help)``."""
    return dataclasses.field(default_factory=cls, metadata={"description": help})


class _SectionMeta(type(BaseModel)):
    """Keys such as ``json`` (registry) or ``register`` (eval) are part of the CLI; pydantic only
    warns that they shadow BaseModel/ABC methods, which the fields then hide on instances."""

    def __new__(mcs, *args: Any, **kwargs: Any):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Field name .* shadows an attribute in parent",
                                    category=UserWarning)
            return super().__new__(mcs, *args, **kwargs)


class Section(BaseModel, metaclass=_SectionMeta):
    """Base of every config section: unknown keys refused, assignments validated, no NaN/Inf,
    numbers read from YAML accepted for string fields. Errors surface as :class:`ConfigError`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False,
                              coerce_numbers_to_str=True)

    # No __init__ override: pydantic would call it for every nested section. Building a
    # section directly raises pydantic's ValidationError (a ValueError); load/from_dict and
    # assignments raise ConfigError.

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as e:
            raise ConfigError(format_error(e, type(self))) from None

    @model_validator(mode="after")
    def _legacy_validate(self):
        """A ``validate()`` method left from the dataclass configs still runs (also in nested
        stdlib-dataclass sections not converted yet)."""
        for name in type(self).model_fields:
            v = getattr(self, name, None)
            if _is_dc(type(v)):
                _legacy_tree(v)
        for klass in type(self).__mro__:
            if klass is Section:
                break
            fn = vars(klass).get("validate")
            if callable(fn):
                fn(self)
                break
        return self


def complete(info: ValidationInfo) -> bool:
    """True when a whole stage config is being loaded (``load``/``from_dict``), so "X is
    required" rules apply; False for ``TrainConfig()`` defaults and attribute assignments."""
    return bool(info.context and info.context.get("complete"))


# --------------------------------------------------------------------------------------
# locations: local paths, and pyarrow.fs URIs where a stage supports them

_URI = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
#: schemes ``pyarrow.fs.FileSystem.from_uri`` builds a filesystem for
PYARROW_SCHEMES = frozenset({"file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss"})
_OBJECT_STORES = frozenset({"s3", "gs", "gcs", "abfs", "abfss", "az", "azure", "oss", "r2", "minio"})


def uri_scheme(value: str) -> str | None:
    """The scheme of ``scheme://...`` (lower case), None for a plain path (``C:\\x`` included)."""
    m = _URI.match(value) if isinstance(value, str) else None
    return m.group(1).lower() if m else None


def shown_uri(uri: str) -> str:
    """``uri`` as it may appear in output: no ``user:password@``, no ``?query``."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    rest = rest.partition("?")[0]
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host.rpartition('@')[2]}{slash}{path}"


_SECRET_QUERY = frozenset({"access_key", "secret_key", "session_token"})


def public_uri(uri: str) -> str:
    """``uri`` without its credentials (``user:password@``, access_key/secret_key/session_token
    in the query) but with the rest of its query (endpoint_override, scheme, region): a
    location a user can paste into another command (``rayft eval candidate=...``)."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    base, _, query = rest.partition("?")
    q = "&".join(p for p in query.split("&") if p and p.split("=", 1)[0] not in _SECRET_QUERY)
    return shown_uri(uri) + (f"?{q}" if q else "")


def _shown(value: str) -> str:
    """A URI as it may appear in an error: no user:password@, no ?query (keys travel there)."""
    scheme, _, rest = value.partition("://")
    rest, q, _ = rest.partition("?")
    host, slash, path = rest.partition("/")
    host = host.rpartition("@")[2]
    return f"{scheme}://{host}{slash}{path}" + ("?..." if q else "")


def check_location(value: str, allowed: frozenset[str] = frozenset()) -> str:
    """``value`` unchanged when it is a plain path or a URI whose scheme is in ``allowed``;
    otherwise a ``location`` error (one line, the config key is put in front by format_error).
    Without this, ``run.dir=s3://bucket/runs`` made a local folder named ``s3:``."""
    scheme = uri_scheme(value)
    if scheme is None or scheme in allowed:
        return value
    shown = _shown(value)
    if allowed:
        msg = (f"{shown}: no filesystem for {scheme}:// here; use a local path or a pyarrow.fs URI "
               f"({', '.join(s + '://' for s in sorted(allowed))})")
    elif scheme == "file":
        msg = f"{shown} is a file:// URI; this location takes a plain local path (drop the file://)"
    else:
        what = "an object-store URI" if scheme in _OBJECT_STORES else f"a {scheme}:// URI"
        msg = (f"{shown} is {what}; rayft reads and writes local paths only here for now (object "
               "storage is issue 16): give a local or mounted path")
    raise PydanticCustomError("location", msg)


#: a ``str`` field that must be a local path (refuses ``s3://...`` and any other ``scheme://``)
LocalPath = Annotated[str, AfterValidator(check_location)]
#: a ``str`` field that takes a local path or a ``pyarrow.fs`` URI (s3://, gs://, hdfs://, file://...)
FsPath = Annotated[str, AfterValidator(lambda v: check_location(v, PYARROW_SCHEMES))]


# --------------------------------------------------------------------------------------
# schema introspection (pydantic models and, during the conversion, stdlib dataclasses)

def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _is_dc(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _is_cfg(tp: Any) -> bool:
    return _is_model(tp) or _is_dc(tp)


@functools.lru_cache(maxsize=None)
def _fields(cls: type) -> dict[str, tuple[Any, Any, str, Any]]:
    """name -> (annotation, default or factory result, description, pydantic FieldInfo | None).
    Cached per class: callers only read it."""
    out = {}
    if _is_model(cls):
        for name, f in cls.model_fields.items():
            default = f.default_factory() if f.default_factory is not None else f.default
            out[name] = (f.annotation, default, f.description or "", f)
    elif _is_dc(cls):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            desc = f.metadata.get("description", f.metadata.get("help", ""))
            out[f.name] = (hints[f.name], default, desc, None)
    return out


def _unwrap(tp: Any) -> Any:
    """``X | None`` -> X; ``Annotated[X, ...]`` -> X."""
    if typing.get_origin(tp) is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def field_type(cls: type, dotted: str) -> Any:
    """The annotation of a dotted key (``train.lr`` -> float); None for an unknown key or a key
    inside an untyped mapping (``space.train.lr``)."""
    tp: Any = cls
    for part in dotted.split("."):
        tp = _unwrap(tp)
        if not _is_cfg(tp):
            return None
        f = _fields(tp).get(part)
        if f is None:
            return None
        tp = f[0]
    return tp


def leaves(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every leaf key of a config class (``train.lr``) -> its annotation."""
    out: dict[str, Any] = {}
    for name, (tp, *_rest) in _fields(cls).items():
        if _is_cfg(_unwrap(tp)):
            out.update(leaves(_unwrap(tp), f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = tp
    return out


def _is_str(tp: Any) -> bool:
    tp = _unwrap(tp)
    return tp is str or (typing.get_origin(tp) is Literal and all(isinstance(a, str) for a in typing.get_args(tp)))


# --------------------------------------------------------------------------------------
# error messages

def _short(v: Any, limit: int = 80) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[:limit - 3] + "..."


def _kind(tp: Any) -> str:
    tp = _unwrap(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    o = typing.get_origin(tp)
    if tp in (list, tuple) or o in (list, tuple):
        return "a list"
    if tp is dict or o is dict or _is_cfg(tp):
        return "a mapping"
    if o is Literal:
        return f"one of {list(typing.get_args(tp))}"
    return "a value"


_SYMBOLS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="))


def _bounds(finfo: Any, ctx: dict | None = None) -> str:
    """'>= 0 and < 1' from a field's constraints (else from the error's own context)."""
    parts = []
    for m in getattr(finfo, "metadata", []) or []:
        for attr, sym in _SYMBOLS:
            v = getattr(m, attr, None)
            if v is not None:
                parts.append(f"{sym} {v}")
    if not parts and ctx:
        parts = [f"{sym} {ctx[attr]}" for attr, sym in _SYMBOLS if attr in ctx]
    return " and ".join(parts)


def _loc_info(cls: type, loc: tuple) -> tuple[str, Any, Any]:
    """(dotted key with [i] for list items, annotation, FieldInfo) of a pydantic error location."""
    dotted, tp, finfo = "", cls, None
    for part in loc:
        if isinstance(part, int):
            dotted += f"[{part}]"
            args = typing.get_args(_unwrap(tp))
            tp, finfo = (args[0] if args else Any), None
            continue
        dotted = f"{dotted}.{part}" if dotted else str(part)
        f = _fields(_unwrap(tp)).get(part) if _is_cfg(_unwrap(tp)) else None
        if f is None:
            tp, finfo = Any, None
        else:
            tp, finfo = f[0], f[3]
    return dotted, tp, finfo


def _numeric_text(s: str) -> bool:
    if len(s) > 40:
        return False
    try:
        float(s.strip().lstrip("."))
        return True
    except ValueError:
        return False


def _one(err: dict, cls: type) -> tuple[str, str, bool]:
    """(dotted key, message, whether the message needs the key in front) of one pydantic error."""
    loc = tuple(err.get("loc", ()))
    dotted, tp, finfo = _loc_info(cls, loc)
    typ, inp = err.get("type", ""), err.get("input")
    if typ in ("value_error", "assertion_error"):  # a model_validator's own message names its keys
        e = (err.get("ctx") or {}).get("error")
        return dotted, (str(e) if e is not None else err.get("msg", "")), False
    last = next((p for p in reversed(loc) if isinstance(p, str)), "")
    kind = _kind(tp)
    if is_secret_name(last):
        got = "<hidden>"
    elif isinstance(inp, str) and _numeric_text(inp):
        got = inp.strip()  # command-line text as typed: `got 0`, `got inf`
    else:
        got = _short(inp)
    if typ == "location":  # check_location: the message shows the URI without credentials
        return dotted, err.get("msg", typ), True
    if typ == "extra_forbidden":
        return dotted, f"unknown config key {dotted!r}", False
    if typ == "missing":
        return dotted, f"{dotted} is required", False
    if typ in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return dotted, f"expected {kind} {_bounds(finfo, err.get('ctx')) or err.get('msg', '')}, got {got}", True
    if typ == "finite_number":
        return dotted, f"expected {'an integer' if kind == 'an integer' else 'a finite number'}, got {got}", True
    if typ == "too_short":
        n = (err.get("ctx") or {}).get("min_length", 1)
        return dotted, f"expected at least {n} item{'s' if n != 1 else ''}, got {got}", True
    if typ == "string_type" and isinstance(inp, bool):
        return dotted, (f"expected a string, got {got} (YAML reads yes/no/on/off/true/false as booleans: "
                        "quote the value)"), True
    if typ == "literal_error" and isinstance(inp, str):
        choices = [str(a) for a in typing.get_args(_unwrap(tp))]
        near = difflib.get_close_matches(inp, choices, n=1, cutoff=0.5)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        return dotted, f"expected {kind}, got {got}{hint}", True
    if typ.startswith(("int_", "float_", "bool_", "string_", "list_", "dict_", "model_", "dataclass_",
                       "literal_", "tuple_", "enum")):
        return dotted, f"expected {kind}, got {got}", True
    return dotted, f"{err.get('msg', typ)}, got {got}", True


def format_error(e: ValidationError, cls: type, origin: Any = None) -> str:
    """One line for a pydantic ``ValidationError``: the first problem with its dotted key (and
    ``origin(dotted)`` -> 'file:line' / 'command line' in front), plus how many more there are."""
    errs = e.errors(include_url=False)
    if not errs:
        return str(e).splitlines()[0]
    dotted, msg, keyed = _one(errs[0], cls)
    if keyed and dotted:
        msg = f"{dotted}: {msg}"
    where = origin(dotted) if origin else ""
    n = len(errs) - 1
    more = f" (and {n} more problem{'s' if n > 1 else ''})" if n else ""
    return f"{where + ': ' if where else ''}{msg}{more}"


# --------------------------------------------------------------------------------------
# building and dumping

def _validate(cls: type[T], data: dict, origin: Any = None, where: str = "") -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}expected a mapping of config keys, got {_short(data)}")
    try:
        if _is_model(cls):
            return cls.model_validate(data, context={"complete": True})
        obj = TypeAdapter(cls).validate_python(data)
    except ValidationError as e:
        raise ConfigError(format_error(e, cls, origin)) from None
    except ConfigError as e:  # a legacy validate() or a validator outside pydantic's wrapping
        raise ConfigError(f"{where}{e}") from None
    _legacy_tree(obj)
    return obj


def _legacy_tree(obj: Any) -> None:
    """Stdlib dataclass configs: run every section's ``validate()``, leaves first."""
    if _is_dc(type(obj)):
        for f in dataclasses.fields(obj):
            _legacy_tree(getattr(obj, f.name))
        check = getattr(obj, "validate", None)
        if callable(check):
            check()


def from_dict(cls: type[T], data: dict | None) -> T:
    """Rebuild a config from ``to_dict`` output (or any mapping), validating keys, types and rules."""
    data = data or {}
    check_keys(cls, data)
    return _validate(cls, data)


def to_dict(cfg: Any) -> dict:
    """The config as plain nested dicts/lists/str/numbers (what crosses the Ray boundary)."""
    if isinstance(cfg, BaseModel):
        return cfg.model_dump(mode="python")
    return dataclasses.asdict(cfg)


_ADAPTER_CONFIG = ConfigDict(allow_inf_nan=False, coerce_numbers_to_str=True)


def coerce(value: Any, tp: Any, where: str = "value") -> Any:
    """``value`` validated/converted to the annotation ``tp`` (e.g. a search-space value to the
    field's type); ConfigError naming ``where`` otherwise."""
    try:
        adapter = TypeAdapter(tp) if _is_cfg(tp) else TypeAdapter(tp, config=_ADAPTER_CONFIG)
        return adapter.validate_python(value)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        _, msg, _keyed = _one({**err, "loc": ()}, tp)
        raise ConfigError(f"{where}: {msg}") from None


# --------------------------------------------------------------------------------------
# unknown keys, with suggestions

def _suggest(cls: type, dotted: str, aliases: dict[str, str] | None = None) -> str:
    keys = list(leaves(cls)) + list(aliases or {})
    last = dotted.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == last and k != dotted]
    best = same_leaf[:1] or difflib.get_close_matches(dotted, keys, n=1, cutoff=0.6)
    if not best:
        by_leaf = difflib.get_close_matches(last, [k.rsplit(".", 1)[-1] for k in keys], n=1, cutoff=0.75)
        best = [k for k in keys if by_leaf and k.rsplit(".", 1)[-1] == by_leaf[0]][:1]
    return f"; did you mean '{best[0]}'?" if best else ""


def check_keys(cls: type, data: Any, origin: Any = None, aliases: dict[str, str] | None = None,
               _prefix: str = "", _cls: type | None = None) -> None:
    """Refuse keys the config class does not have, suggesting the closest valid key."""
    root = _cls or cls
    if not isinstance(data, dict):
        return
    fields = _fields(cls)
    for k, v in data.items():
        dotted = f"{_prefix}{k}"
        if not isinstance(k, str) or k not in fields:
            where = origin(dotted) if origin else ""
            hint = _suggest(root, dotted, aliases)
            if not hint:
                hint = f"; valid keys{' under ' + _prefix[:-1] if _prefix else ''}: {', '.join(fields)}"
            raise ConfigError(f"{where + ': ' if where else ''}unknown config key {dotted!r}{hint}")
        tp = _unwrap(fields[k][0])
        if _is_cfg(tp):
            check_keys(tp, v, origin, aliases, f"{dotted}.", root)


# --------------------------------------------------------------------------------------
# key=value overrides

def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if any(not p for p in parts):
        raise ConfigError(f"command line: bad key {dotted!r} in override (empty part)")
    cur = d
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"command line: override {dotted!r}: {p!r} is set to a value, not a section")
        cur = nxt
    cur[parts[-1]] = value


def _list_of_text(raw: str) -> Any:
    """``[a, no, 0123]`` -> ['a', 'no', '0123'] (YAML flow syntax, every scalar kept as text)."""
    try:
        return yaml.load(raw, Loader=yaml.BaseLoader)
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {_yaml_problem(e)}") from None
    except RecursionError:
        raise ConfigError("not valid YAML: nested too deeply") from None


def parse_value(raw: str, tp: Any) -> Any:
    """An override's text, parsed by the type of the field it sets: ``str`` fields (and
    enumerations) take the text as written; lists of text take ``[a, b]`` or ``a,b`` with
    every item as text; numbers and booleans are left to the field's validation; anything
    else (mappings, unknown keys) is read as YAML."""
    if tp is not None and _is_str(tp):
        return raw
    t = _unwrap(tp) if tp is not None else None
    if t is not None and t is not tp and raw.strip() in ("null", "~", "None"):
        return None
    o = typing.get_origin(t)
    if t in (int, float, bool):
        return raw.strip()
    if t in (list, tuple) or o in (list, tuple):
        inner = (typing.get_args(t) or (Any,))[0]
        s = raw.strip()
        if s.startswith("["):
            if _is_str(inner):
                return _list_of_text(s)
            return _yaml_value(s)
        return [v.strip() for v in s.split(",") if v.strip()]
    if o is dict and len(typing.get_args(t)) == 2 and all(_is_str(a) for a in typing.get_args(t)):
        return _list_of_text(raw)
    return _yaml_value(raw)


def _yaml_value(raw: str) -> Any:
    if raw == "":
        return ""
    try:
        return yaml.safe_load(raw)
    except (yaml.YAMLError, RecursionError):
        return raw


def parse_overrides(items: list[str], aliases: dict[str, str] | None = None, cls: type | None = None) -> dict:
    """``["train.lr=1e-4", "scaling.num_workers=2"]`` -> nested dict. With ``cls``, each value
    is parsed by the type of its field (see :func:`parse_value`) and unknown keys are refused
    against the command line; without it, values are read as YAML."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            k = item.strip()
            if cls is not None and (k in (aliases or {}) or field_type(cls, k) is not None):
                raise ConfigError(f"command line: {item!r} has no value; write {k}=VALUE")
            hint = _suggest(cls, k, aliases) if cls is not None else ""
            if k.endswith((".yaml", ".yml")):
                hint = f"; a config file goes after --config: --config {k}"
            raise ConfigError(f"command line: {item!r} is not of the form key=value{hint}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"command line: {item!r} has no key before '='")
        if aliases and key in aliases:
            key = aliases[key]
        if cls is not None:
            try:
                check_keys(cls, _nest(key, None), lambda _k: "command line", aliases)
            except ConfigError:  # suggest from the whole key: 'trian.max_steps' -> 'train.max_steps'
                hint = _suggest(cls, key, aliases)
                if not hint:
                    raise
                raise ConfigError(f"command line: unknown config key {key!r}{hint}") from None
            try:
                value = parse_value(raw, field_type(cls, key))
            except ConfigError as e:
                raise ConfigError(f"command line: {key}: {e}") from None
        else:
            value = _yaml_value(raw)
        _set_dotted(out, key, value)
    return out


def _nest(dotted: str, value: Any) -> dict:
    out: dict = {}
    _set_dotted(out, dotted, value)
    return out


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# --------------------------------------------------------------------------------------
# YAML files with `defaults:` layering; where every key came from

def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"line {mark.line + 1}: {problem}" if mark is not None else problem


def _key_lines(node: Any, prefix: str, out: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                dotted = f"{prefix}{k.value}"
                out[dotted] = k.start_mark.line + 1
                _key_lines(v, dotted + ".", out)


def _read_layers(path: str | Path, stack: tuple[Path, ...] = ()) -> tuple[dict, dict[str, str]]:
    """(data, {dotted key: 'file:line'}) of a YAML config with its ``defaults:`` layered under it."""
    p = Path(path)
    if not p.is_file():
        via = f" (listed in defaults: of {stack[-1]})" if stack else ""
        raise ConfigError(f"config file not found: {p}{via}")
    rp = p.resolve()
    if rp in stack:
        chain = " -> ".join(str(s) for s in (*stack, rp))
        raise ConfigError(f"{stack[-1]}: defaults: includes itself ({chain})" if rp == stack[-1]
                          else f"{stack[-1]}: defaults: cycle {chain}")
    if len(stack) > 20:
        raise ConfigError(f"{p}: defaults: nested more than 20 files deep")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        line = e.object[:e.start].count(b"\n") + 1
        raise ConfigError(f"{p}:{line}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                          "save the config as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {_yaml_problem(e)}") from None
    except RecursionError:
        raise ConfigError(f"{p}: not valid YAML: nested too deeply") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of config keys at the top level, got {type(data).__name__} "
                          f"{_short(data, 40)}")
    lines: dict[str, int] = {}
    _key_lines(node, "", lines)
    prov = {k: f"{p}:{n}" for k, n in lines.items()}
    base = data.pop("defaults", None)
    prov.pop("defaults", None)
    if base is None:
        return data, prov
    bases = [base] if isinstance(base, str) else base
    if not isinstance(bases, list) or not bases or not all(isinstance(b, str) and b.strip() for b in bases):
        raise ConfigError(f"{p}:{lines.get('defaults', '?')}: defaults: expected a file path or a list of file "
                          f"paths, got {_short(base, 60)}")
    merged: dict = {}
    merged_prov: dict[str, str] = {}
    for b in bases:
        bd, bp = _read_layers(p.parent / b, (*stack, rp))
        merged, merged_prov = deep_merge(merged, bd), {**merged_prov, **bp}
    return deep_merge(merged, data), {**merged_prov, **prov}


def read_yaml(path: str | Path) -> dict:
    """A YAML config file as a dict, with its ``defaults:`` files layered under it."""
    return _read_layers(path)[0]


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
         aliases: dict[str, str] | None = None) -> T:
    """Config from an optional YAML file plus ``key=value`` overrides (overrides win)."""
    data, prov = _read_layers(path) if path else ({}, {})
    over = parse_overrides(overrides or [], aliases, cls)
    from_cli = set(_dotted_keys(over))

    def origin(dotted: str) -> str:
        """Where the value at ``dotted`` came from: the command line or file:line."""
        key = re.sub(r"\[\d+\]", "", dotted)
        if not key:  # a whole-config rule: its message names the keys
            return ""
        if any(key == k or key.startswith(k + ".") for k in from_cli):
            return "command line"
        srcs = []
        hits = [k for k in prov if key == k or key.startswith(k + ".")]
        if hits:
            srcs.append(prov[max(hits, key=len)])
        elif path and any(k.startswith(key + ".") for k in prov):
            srcs.append(str(path))
        if any(k.startswith(key + ".") for k in from_cli):
            srcs.append("command line")
        return " + ".join(srcs)

    check_keys(cls, data, lambda d: _file_origin(d, prov, path), aliases)
    return _validate(cls, deep_merge(data, over), origin)


def _file_origin(dotted: str, prov: dict[str, str], path: Any) -> str:
    return prov.get(dotted) or str(path or "")


def _dotted_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.append(key)
        if isinstance(v, dict):
            out += _dotted_keys(v, key + ".")
    return out


# --------------------------------------------------------------------------------------
# --help and --print-config

def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every leaf field, for --help output."""
    import json

    rows = []
    for name, (tp, default, desc, _f) in _fields(cls).items():
        key = f"{prefix}{name}"
        if _is_cfg(_unwrap(tp)):
            rows.extend(describe(_unwrap(tp), key + "."))
        else:
            shown = "***" if is_secret_name(name) and default not in ("", None) else default
            rows.append((key, json.dumps(shown, ensure_ascii=False), desc))
    return rows


def help_text(cls: type, aliases: dict[str, str] | None = None) -> str:
    lines = ["config keys (set in the YAML file or as key=value):"]
    for key, default, hlp in describe(cls):
        _, tp, finfo = _loc_info(cls, tuple(key.split(".")))
        bounds = _bounds(finfo)
        rng = f"; {_kind(tp)} {bounds}" if bounds else ""
        lines.append(f"  {key} (default {default}{rng})\n      {hlp}")
    if aliases:
        lines.append("short aliases: " + ", ".join(f"{a} -> {k}" for a, k in aliases.items()))
    return "\n".join(lines)


_SECRET_WORDS = {"key", "apikey", "token", "password", "passwd", "pwd", "secret", "secrets", "credential",
                 "credentials", "auth", "bearer", "webhook"}  # webhook URLs (Slack's) carry their token
_NOT_SECRET_TAIL = {"env", "file", "path", "var", "limit", "default", "len", "bits", "format", "kind", "chars"}


def is_secret_name(name: str) -> bool:
    """``api_key``, ``token``, ``smtp_password``, ``client_secret`` are secrets; ``api_key_env``
    (the name of a variable), ``max_tokens_limit`` and friends are not."""
    parts = [p for p in re.split(r"[_.\-]+", str(name).lower()) if p]
    if not parts or parts[-1] in _NOT_SECRET_TAIL:
        return False
    return any(p in _SECRET_WORDS for p in parts)


_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://)[^/\s@]+@", re.I)
_URL_QUERY_SECRET = re.compile(r"(?P<k>[?&][^=&#]*(?:key|token|secret|password|sig)[^=&#]*=)[^&#\s]+", re.I)


def _mask_text(s: str) -> str:
    if uri_scheme(s) in ("s3", "gs", "gcs", "abfs", "abfss", "hdfs"):
        # s3://key:secret@bucket/x?secret_key=...: credentials dropped, the location stays
        # usable (credentials come from the environment)
        return public_uri(s)
    s = _URL_USERINFO.sub(r"\g<scheme>***@", s)
    return _URL_QUERY_SECRET.sub(r"\g<k>***", s)


def saved_config(cfg) -> dict:
    """A config as written into run files (config.yaml, report.json, checkpoint state): secrets
    masked, credentials dropped from object-store URIs (they come from the environment)."""
    return mask_secrets(to_dict(cfg), type(cfg))


def saved_command(argv: list[str]) -> str:
    """The command line as recorded in a report: credentials in its arguments masked."""
    return " ".join(_mask_text(a) for a in argv)


def mask_secrets(d: Any, cls: type | None = None) -> Any:
    """A copy of a config dict with secret values (keys named like a key/token/password/secret,
    holding text) shown as ``***``, and credentials inside URLs masked. Enumerations (``secrets.
    api_key: drop`` in curate) are not secrets."""
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            tp = field_type(cls, str(k)) if cls is not None and _is_cfg(cls) else None
            sub = _unwrap(tp) if tp is not None else None
            literal = tp is not None and typing.get_origin(_unwrap(tp)) is Literal
            if is_secret_name(str(k)) and not literal and isinstance(v, (str, int, float)) \
                    and not isinstance(v, bool) and v != "":
                out[k] = "***"
            elif is_secret_name(str(k)) and isinstance(v, list) and v and all(isinstance(x, str) for x in v):
                out[k] = ["***" for _ in v]
            else:
                out[k] = mask_secrets(v, sub if _is_cfg(sub) else None)
        return out
    if isinstance(d, list):
        return [mask_secrets(v) for v in d]
    if isinstance(d, str):
        return _mask_text(d)
    return d

