"""`rayft watch` rules as pure functions: window, skip rule, backoff, stage plan, replay
sample, stable files, resource thresholds, config errors. No Ray."""
from __future__ import annotations

import datetime as dt

import pytest

from rayft.config import ConfigError, load
from rayft.watch import policy as P
from rayft.watch.config import ALIASES, WatchConfig


def at(h, m=0):
    return dt.datetime(2026, 11, 30, h, m)


def test_window_plain_and_wrapping_midnight():
    assert P.in_window("", at(13))
    assert P.in_window("02:00-06:00", at(2)) and P.in_window("02:00-06:00", at(5, 59))
    assert not P.in_window("02:00-06:00", at(6)) and not P.in_window("02:00-06:00", at(1, 59))
    assert P.in_window("22:30-04:00", at(23)) and P.in_window("22:30-04:00", at(0, 10))
    assert P.in_window("22:30-04:00", at(22, 30)) and not P.in_window("22:30-04:00", at(4))
    assert not P.in_window("22:30-04:00", at(12))
    assert P.next_window_start("02:00-06:00", at(7)) == dt.datetime(2026, 12, 1, 2, 0)
    assert P.next_window_start("02:00-06:00", at(1)) == dt.datetime(2026, 11, 30, 2, 0)
    assert P.next_window_start("", at(1)) is None
    for bad in ("2-6", "02:00", "25:00-06:00", "02:00-02:00", "02:60-03:00"):
        with pytest.raises(ConfigError, match="watch.window"):
            P.parse_window(bad)


def test_skip_rule_half_percent():
    assert P.should_skip(0.004, 0) and P.should_skip(-0.02, 0)
    assert not P.should_skip(0.005, 0) and not P.should_skip(0.2, 0)
    assert not P.should_skip(0.001, 10)  # new data always trains
    assert not P.should_skip(None, 0)    # nothing accepted yet
    assert P.should_skip(0.009, 0, min_gain=0.01)


def test_backoff_schedule():
    assert [P.backoff(a, 30, 600) for a in (1, 2, 3, 4, 5, 9)] == [0, 30, 60, 120, 240, 600]
    assert P.backoff(3, 0, 600) == 0


def test_plan_stages():
    assert P.plan_stages(False, 0, 0, True) == ["warmup", "full"]
    assert P.plan_stages(False, 0, 0, False) == ["full"]
    assert P.plan_stages(True, 5, 0, True) == ["incremental"]
    assert P.plan_stages(True, 1, 3, True) == ["incremental"]
    assert P.plan_stages(True, 2, 3, True) == ["warmup", "full"]  # the 3rd cycle since a full one


def test_replay_sample_is_deterministic_and_order_free():
    ids = [f"row{i}" for i in range(100)]
    s = P.replay_sample(ids, 10)
    assert len(s) == 10 and s == sorted(s) and s == P.replay_sample(ids, 10)
    rev = list(reversed(ids))
    assert sorted(rev[i] for i in P.replay_sample(rev, 10)) == sorted(ids[i] for i in s)
    assert len(P.replay_sample(ids, 10, ratio=2.0)) == 20 and len(P.replay_sample(ids, 10, ratio=0.5)) == 5
    assert len(P.replay_sample(ids, 500)) == 100 and P.replay_sample(ids, 0) == []
    assert P.replay_sample(ids, 10, salt="x") != s
    assert set(P.replay_sample(ids, 20)) >= set(s)  # a bigger sample extends the smaller one


def test_stable_files_need_two_identical_scans():
    a = {"/d/a.jsonl": (10, 1), "/d/b.jsonl": (5, 1)}
    b = {"/d/a.jsonl": (10, 1), "/d/b.jsonl": (7, 2), "/d/c.jsonl": (1, 3)}
    assert P.stable_files({}, a) == []
    assert P.stable_files(a, b) == ["/d/a.jsonl"]


def test_resource_thresholds():
    assert P.resource_problems(50, 100, 85, 5) == []
    assert P.resource_problems(90, 100, 85, 5) == ["node memory 90.0% > 85%"]
    assert P.resource_problems(10, 4.5, 85, 5) == ["disk free 4.5 GB < 5 GB"]
    assert P.resource_problems(99, 0, 0, 0) == []  # 0 disables
    mem, disk = P.resource_usage("/")
    assert 0 < mem <= 100 and disk > 0


def test_steps_and_gain_helpers():
    assert P.steps_for_epochs(1, 24, 2, 4, 1) == 3 and P.steps_for_epochs(2, 1, 2, 4, 1) == 1
    assert P.relative_gain_of({"checks": [{"rule": "finite"}, {"rule": "golden", "relative_gain": 0.02}]}) == 0.02
    assert P.relative_gain_of({}) is None


def test_config_aliases_and_errors():
    cfg = load(WatchConfig, None, ["input=/data/in", "dir=/tmp/w", "once=true", "recipe=r.yaml"], ALIASES)
    assert cfg.watch.input == ["/data/in"] and cfg.watch.once and cfg.train.recipe == "r.yaml"
    with pytest.raises(ConfigError, match="watch.input is required"):
        load(WatchConfig, None, [], ALIASES)
    with pytest.raises(ConfigError, match="watch.window"):
        load(WatchConfig, None, ["input=x", "watch.window=nightly"], ALIASES)
    with pytest.raises(ConfigError, match="max_retries"):
        load(WatchConfig, None, ["input=x", "watch.max_retries=0"], ALIASES)
