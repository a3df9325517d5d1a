"""Fuzz every CLI stage's ``key=value`` parser (hypothesis, bounded): random keys and values give
a config or one ConfigError line, never another exception. No Ray; the stages never run."""
from __future__ import annotations

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rayft.cli import STAGES, _resolve, stage_config  # noqa: E402
from rayft.config import ConfigError, leaves  # noqa: E402

STAGE_NAMES = sorted(STAGES)
KEYS = sorted({k for spec, *_ in STAGES.values() for k in leaves(_resolve(spec))}
              | {a for *_, aliases in STAGES.values() for a in aliases})
NASTY = ["inf", "-inf", ".inf", "nan", ".nan", "1e400", "-1e400", "9" * 5000, "0x10", "0o17", "1_000", "12:30",
         "0123", "yes", "no", "on", "~", "null", "", " ", "[", "]", "{", "}", "[no]", "{a: [}", "[" * 3000,
         "{a: 1}", "[1, 2]", "- a", "!!python/object:os.system", "&a [*a]", "'", '"', "\x00", "\ud800",
         "ｐａｓｓｗｏｒｄ", "pass\u200bword", "-1", "0", "1.5", "true", "False", "a,b,,c", "{id}", "{0[0]}", "{id[0]}",
         "%(x)s", "\\", "../../etc/passwd", "s3://a:b@c/d"]

key = st.one_of(st.sampled_from(KEYS),
                st.sampled_from(KEYS).map(lambda k: k + "x"),
                st.sampled_from(KEYS).map(lambda k: k.split(".")[-1]),
                st.sampled_from(KEYS).map(lambda k: k + ".sub"),
                st.text(st.characters(blacklist_categories=("Cs",)), max_size=12).filter(lambda k: "=" not in k))
value = st.one_of(st.sampled_from(NASTY), st.text(max_size=30),
                  st.integers().map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr))
item = st.one_of(st.tuples(key, value).map(lambda kv: f"{kv[0]}={kv[1]}"), st.text(max_size=20))


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(stage=st.sampled_from(STAGE_NAMES), items=st.lists(item, max_size=4))
def test_overrides_give_a_config_or_one_config_error(stage, items):
    try:
        stage_config(stage, None, items)
    except ConfigError as e:
        msg = str(e)
        assert msg and "\n" not in msg and "Traceback" not in msg, msg
        assert len(msg) < 2000


@settings(max_examples=60, deadline=None, derandomize=True)
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_config_file_text_gives_a_config_or_one_config_error(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    p.write_bytes(text.encode("utf-8", "surrogatepass") if text.isascii() else text.encode("latin-1", "replace"))
    try:
        stage_config("serve", str(p), [])
    except ConfigError as e:
        assert "\n" not in str(e)
