"""Shared fixtures: ONE session-scoped local Ray (num_cpus=2) for every Ray test."""
from __future__ import annotations

import os
import sys
from pathlib import Path

# Before anything imports ray: bind to loopback, no usage stats, CPU DeepSpeed.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")  # as rayft._env sets it

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


WORKER_ENV = {"DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
              "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]}


def init_session_ray():
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True,  # not a stale ray_current_cluster
                 runtime_env={"env_vars": WORKER_ENV})
    return ray


@pytest.fixture(scope="session")
def ray_session():
    """A local single-node Ray cluster shared by the whole session (~10 s to start)."""
    ray = init_session_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def multinode():
    """A real multi-node Ray cluster (tests/multinode.py: head with 0 CPUs + node_a and node_b,
    1 CPU each, own raylets) with this process connected as its driver. One driver talks to one
    cluster, so the session Ray is shut down first and started again afterwards (only if it was
    up: the ``ray_session`` fixture's cached value must stay usable for later modules)."""
    import ray

    import multinode as mn

    had_session = ray.is_initialized()
    ray.shutdown()
    cl = mn.start(("node_a", "node_b"), cpus=1)
    try:
        ray.init(address=cl.address, log_to_driver=True, runtime_env={"env_vars": WORKER_ENV})
        yield cl
    finally:
        ray.shutdown()
        cl.cluster.shutdown()
        if had_session:
            init_session_ray()


@pytest.fixture
def repo() -> Path:
    return REPO


def pytest_collection_modifyitems(config, items):
    try:
        import torch
        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)


sys.path.insert(0, str(REPO / "tests"))
