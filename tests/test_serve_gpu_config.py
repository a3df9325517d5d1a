"""The GPU serving path as configuration (issue 20 item 6), testable without a GPU: a replica's
GPU share reaches Ray's actor options, its device and dtype are decided where the replica runs
(auto: float32 on CPU, bfloat16 on a GPU that has it, else float16), a GPU asked for but absent
is one clear error, and the engine really runs a lower-precision model (bf16 on CPU here)."""
from __future__ import annotations

import pytest
import torch

from rayft.config import ConfigError, load
from rayft.registry import Registry
from rayft.serve.app import engine_options, replica_options
from rayft.serve.config import ServeConfig
from rayft.serve.engine import Engine, EngineError, placement
from rayft.testing.runs import make_run


def test_gpu_share_and_dtype_reach_the_replica_options():
    cfg = load(ServeConfig, None, ["num_gpus=0.5", "dtype=float16", "num_cpus=2"])
    assert replica_options(cfg) == {"num_cpus": 2.0, "num_gpus": 0.5}
    assert engine_options(cfg) == {"kind": "transformers", "num_gpus": 0.5, "dtype": "float16"}
    cpu = load(ServeConfig, None, [])
    assert replica_options(cpu) == {"num_cpus": 1.0}  # no num_gpus key: Ray does not reserve a GPU
    assert (cpu.num_gpus, cpu.dtype) == (0.0, "auto")
    with pytest.raises(ConfigError, match="num_gpus applies to engine=transformers"):
        load(ServeConfig, None, ["engine=llamacpp", "num_gpus=1"])
    with pytest.raises(ConfigError, match="dtype"):
        load(ServeConfig, None, ["dtype=int4"])


def test_placement_decides_device_and_dtype_on_the_replica():
    assert placement(0) == ("cpu", "float32")
    assert placement(0, "bfloat16") == ("cpu", "bfloat16")
    assert placement(1, cuda=True, bf16=True) == ("cuda", "bfloat16")
    assert placement(0.5, cuda=True, bf16=False) == ("cuda", "float16")  # e.g. a T4
    assert placement(1, "float32", cuda=True) == ("cuda", "float32")
    with pytest.raises(EngineError, match="num_gpus=1, but torch sees no CUDA device"):
        placement(1, cuda=False)


def test_engine_serves_a_bf16_model_and_adapter(tmp_path):
    """The dtype is real: the base is stored and run in bfloat16, the adapter attaches, answers come."""
    from rayft.models.spec import base_spec

    reg = Registry(str(tmp_path / "reg"), "en")
    ev = {"decision": "promote", "champion_version": None, "gate": {"golden_metric": "loss"},
          "metrics": {"candidate": {"golden": {"loss": 1.0}}}}
    v = reg.register(make_run(tmp_path / "run", noise=0.5, lora_seed=1), ev)["version"]
    req = {"kind": "chat", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 6,
           "temperature": 0.0, "top_p": 1.0, "stop": [], "seed": None}
    m, local = reg.fetch(v)
    answers = {}
    for dtype in ("float32", "bfloat16"):
        eng = Engine(base_spec("tiny-qwen2", 0), threads=1, dtype=dtype)
        assert (eng.device, next(eng.base.parameters()).dtype) == ("cpu", getattr(torch, dtype))
        out = eng.generate(eng.load(f"en/{v}", m, local), req)
        assert out["completion_tokens"] > 0 and out["prompt_tokens"] > 0
        answers[dtype] = out
    assert answers["bfloat16"]["prompt_tokens"] == answers["float32"]["prompt_tokens"]
