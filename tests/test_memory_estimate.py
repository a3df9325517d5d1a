"""Pre-launch memory estimate (pure arithmetic over a ModelShape), its refusals, and the RSS
watchdog's trip logic. No Ray."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayft.cli import main
from rayft.config import load
from rayft.train.config import TrainConfig
from rayft.train.memory import GB, MemoryBudgetError, ModelShape, check_fits, estimate, suggestions
from rayft.train.watchdog import RssWatchdog, stop_message

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "src/rayft/assets/samples/subtitle_pairs.jsonl"
# Published config.json of Qwen/Qwen2.5-0.5B (architecture fields)
QWEN05 = {"architectures": ["Qwen2ForCausalLM"], "hidden_act": "silu", "hidden_size": 896,
          "intermediate_size": 4864, "max_position_embeddings": 32768, "model_type": "qwen2",
          "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06,
          "rope_theta": 1000000.0, "tie_word_embeddings": True, "vocab_size": 151936}


def cfg(*overrides: str, recipe: str = "configs/tiny.yaml") -> TrainConfig:
    return load(TrainConfig, REPO / recipe, [f"data.path={SAMPLES}", *overrides])


@pytest.fixture(scope="module")
def qwen05_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("qwen05")
    (d / "config.json").write_text(json.dumps(QWEN05))
    return d


@pytest.fixture(scope="module")
def qwen05(qwen05_dir) -> ModelShape:
    from rayft.train.shape import model_shape
    return model_shape(cfg("lora.target_modules=[q_proj,k_proj,v_proj,o_proj]", "lora.r=8"), str(qwen05_dir))


def test_shape_from_config_without_weights(qwen05):
    # the published parameter count of Qwen2.5-0.5B (tied embeddings counted once)
    assert qwen05.n_params == 494_032_768
    assert qwen05.largest_param == 151936 * 896  # the embedding
    # LoRA r=8 on q,k,v,o: r * (in + out) per projection, 24 layers (k/v project to 2 heads x 64)
    assert qwen05.lora_params == 24 * 8 * ((896 + 896) * 2 + (896 + 128) * 2)
    assert (qwen05.layers, qwen05.hidden, qwen05.intermediate, qwen05.vocab) == (24, 896, 4864, 151936)


def test_freeze_embeddings_counts_and_builds(qwen05):
    from rayft.models.load import load_tokenizer
    from rayft.train.build import build_model

    assert qwen05.embed_params == 151936 * 896 and qwen05.largest_non_embed == 4864 * 896
    base = ["train.method=full", "train.strategy=zero3", "scaling.num_workers=4", "train.offload_optimizer=nvme"]
    full, frozen = (estimate(cfg(*base, f"train.freeze_embeddings={f}"), qwen05) for f in ("false", "true"))
    assert frozen.total < full.total - 0.8 * GB  # no full-size embedding gradient, small swap buffers
    model = build_model(cfg("train.method=full", "train.freeze_embeddings=true"), "tiny-qwen2",
                        load_tokenizer("tiny-qwen2"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "model.embed_tokens.weight" not in trainable and "model.layers.0.mlp.up_proj.weight" in trainable
    with pytest.raises(Exception, match="applies to train.method=full"):
        cfg("train.freeze_embeddings=true")


def test_lora_count_matches_peft():
    from rayft.models.load import load_tokenizer
    from rayft.train.build import build_model
    from rayft.train.shape import model_shape

    c = cfg()
    model = build_model(c, "tiny-qwen2", load_tokenizer("tiny-qwen2"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert model_shape(c, "tiny-qwen2").lora_params == trainable


def test_terms_follow_strategy_arithmetic(qwen05):
    N, L = qwen05.n_params, qwen05.lora_params
    base = ["data.max_seq_len=128", "train.batch_size=1", "train.gradient_checkpointing=true"]
    ddp = estimate(cfg(*base, "train.method=full", "scaling.num_workers=2"), qwen05).parts
    assert ddp["weights"] == 4 * N and ddp["optimizer"] == 8 * N and ddp["grads"] == 2 * 4 * N
    z3 = {w: estimate(cfg(*base, "train.method=full", "train.strategy=zero3", f"scaling.num_workers={w}"),
                      qwen05).parts for w in (2, 4)}
    assert z3[4]["weights"] == 4 * N / 4 and z3[4]["optimizer"] == 8 * N / 4 and z3[4]["master"] == 4 * N / 4
    assert sum(z3[4].values()) < sum(z3[2].values()) < sum(ddp.values())
    nvme = estimate(cfg(*base, "train.method=full", "train.strategy=zero3", "scaling.num_workers=4",
                        "train.offload_optimizer=nvme", "train.offload_params=nvme"), qwen05)
    # optimizer states (and the fp32 master) live on disk; only the swap buffers stay
    assert nvme.parts["master"] == 0 and nvme.parts["optimizer"] < z3[4]["optimizer"]
    lora = estimate(cfg(*base, "scaling.num_workers=1"), qwen05).parts
    assert lora["optimizer"] == 8 * L and lora["weights"] == 4 * N
    # activations: checkpointing keeps only layer inputs; longer sequences cost more
    no_ckpt = estimate(cfg("data.max_seq_len=128", "train.batch_size=1", "scaling.num_workers=1"), qwen05)
    assert no_ckpt.parts["activations"] > lora["activations"]
    longer = estimate(cfg("data.max_seq_len=512", "train.batch_size=1", "train.gradient_checkpointing=true",
                          "scaling.num_workers=1"), qwen05)
    assert longer.parts["activations"] > 3 * lora["activations"]
    assert "GB per worker (runtime" in nvme.line()


def test_refusal_names_numbers_and_what_fits(qwen05):
    full_ddp = load(TrainConfig, REPO / "configs/profiles/cpu-4gb.yaml",
                    [f"data.path={SAMPLES}", "train.method=full", "scaling.num_workers=1"])
    with pytest.raises(MemoryBudgetError) as e:
        check_fits(full_ddp, qwen05, "float32")
    msg = str(e.value)
    assert "exceeds the watchdog line 3.60 GB" in msg and "memory.budget_gb=4" in msg
    assert "would fit:" in msg and "train.strategy=zero3" in msg
    # the embeddings kept trained: sliced by vocabulary (train.vocab_chunks) before frozen
    assert "train.vocab_chunks=8" in msg
    for s in suggestions(full_ddp, qwen05, "float32", 3.6 * GB):
        assert float(s.rsplit("-> ", 1)[1].split(" GB")[0]) <= 3.6
    # the same profile admits LoRA on one worker
    lora = load(TrainConfig, REPO / "configs/profiles/cpu-4gb.yaml", [f"data.path={SAMPLES}", "scaling.num_workers=1"])
    assert check_fits(lora, qwen05, "float32").total <= 3.6 * GB
    # refuse_over_estimate=false prints instead of refusing
    assert check_fits(load(TrainConfig, REPO / "configs/profiles/cpu-4gb.yaml", [
        f"data.path={SAMPLES}", "train.method=full", "memory.refuse_over_estimate=false"]), qwen05, "float32").total > 3.6 * GB


def test_cli_refuses_profile_too_small(tmp_path, capsys, qwen05_dir):
    rc = main(["train", "--config", str(REPO / "configs/train-w1-4gb.yaml"), f"run.dir={tmp_path}",
               "run.name=toobig", f"data.path={SAMPLES}", f"model.name={qwen05_dir}", "model.init=random", "train.method=full",
               "scaling.num_workers=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert "memory: estimated peak" in err and "would fit:" in err
    assert not (tmp_path / "toobig").exists()  # refused before the run directory, Ray or any worker


def test_watchdog_trips_past_line_only():
    wd = RssWatchdog(limit_bytes=1 * 2**20, interval_s=0.01)  # 1 MB: this process is far above
    assert wd.sample() > 2**20 and wd.tripped.is_set() and wd.at_trip > 2**20
    wd2 = RssWatchdog(limit_bytes=1024 * GB)
    wd2.start()
    wd2.sample()
    wd2.stop()
    wd2.join(timeout=5)
    assert not wd2.tripped.is_set() and wd2.max_sampled > 0
    off = RssWatchdog(limit_bytes=0)  # budget 0 = watchdog disabled
    off.sample()
    assert not off.tripped.is_set()
    msg = stop_message(1, 3.7 * GB, 4.0, 0.9, 12, "step_0000012")
    assert "worker rank 1" in msg and "3.70 GB" in msg and "4 GB budget" in msg and "3.60 GB" in msg
    assert "step 12" in msg


def test_compact_malloc_only_where_memory_is_capped(monkeypatch):
    """memory.malloc=auto: glibc's default (faster) for plain ddp, the compact settings (freed
    tensors go back to the OS) under a memory budget or DeepSpeed; the user's env value wins."""
    from rayft import _env
    from rayft.train.launch import compact_malloc

    for k in _env.WORKER_MALLOC:
        monkeypatch.delenv(k, raising=False)
    assert not compact_malloc(cfg())
    assert compact_malloc(cfg("memory.budget_gb=4"))
    assert compact_malloc(cfg("train.strategy=zero3"))
    assert not compact_malloc(cfg("train.strategy=zero3", "memory.malloc=default"))
    assert compact_malloc(cfg("memory.malloc=compact"))
    assert "MALLOC_MMAP_THRESHOLD_" not in _env.worker_env()
    assert _env.worker_env(True)["MALLOC_MMAP_THRESHOLD_"] == str(2**20)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert _env.worker_env(True)["MALLOC_ARENA_MAX"] == "4"


def test_train_controller_poll_interval_reaches_workers(monkeypatch):
    """rayft shortens Ray Train's controller poll (each report waited up to 2 s on it) and hands
    the value to every Ray worker, the controller included; a value the user set wins."""
    from rayft import _env

    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    _env.apply()
    assert _env.worker_env()["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.25"
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "1.0")
    _env.apply()
    assert _env.worker_env()["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "1.0"
