"""_env.ray_start picks the Ray to use (pure: ray.init is recorded, nothing starts)."""
from __future__ import annotations

import ray

from rayft import _env


def _calls(monkeypatch, **env):
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setenv("RAYFT_VERBOSE", "1")  # (skips quiet_ray: not what is tested here)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return calls


def test_no_address_starts_a_new_local_ray_even_with_a_stale_current_cluster(monkeypatch, tmp_path):
    # a stopped `ray start --head` leaves /tmp/ray/ray_current_cluster behind: ray.init() without an
    # address would connect to that dead GCS and retry for minutes (seen on this machine)
    (tmp_path / "ray_current_cluster").write_text("127.0.0.1:1")
    calls = _calls(monkeypatch, RAY_TMPDIR=str(tmp_path))
    assert _env.ray_start(num_cpus=2) is True
    assert calls[0]["address"] == "local" and calls[0]["num_cpus"] == 2
    assert calls[0]["include_dashboard"] is False


def test_an_address_or_ray_address_is_joined(monkeypatch):
    calls = _calls(monkeypatch)
    _env.ray_start(address="10.0.0.1:6379")
    assert calls[-1]["address"] == "10.0.0.1:6379"
    calls = _calls(monkeypatch, RAY_ADDRESS="http://127.0.0.1:8265")
    _env.ray_start()
    assert "address" not in calls[-1]  # ray.init reads RAY_ADDRESS itself (ray job submit)
