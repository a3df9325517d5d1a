"""Every recipe in configs/ loads with its stage's config class (torchtune's test_configs)."""
from __future__ import annotations

from pathlib import Path

import pytest

from rayft.cli import STAGES, _resolve
from rayft.config import load

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# recipe file -> the stage that reads it; a new recipe must be added here
STAGE_OF = {"tiny.yaml": "train", "demo.yaml": "train", "curate.yaml": "curate",
            "frames.yaml": "frames embed", "eval.yaml": "eval", "serve.yaml": "serve",
            "sweep.yaml": "sweep", "watch.yaml": "watch"}
STAGE_OF.update({p.relative_to(CONFIGS).as_posix(): "train"
                 for p in CONFIGS.glob("train*.yaml")})


@pytest.mark.parametrize("path", sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.glob("*.yaml")))
def test_recipe_loads(path):
    assert path in STAGE_OF, f"configs/{path} is not mapped to a stage in tests/test_configs.py"
    stage = STAGE_OF[path]
    if stage not in STAGES:
        pytest.fail(f"configs/{path}: stage {stage!r} is not registered in rayft.cli.STAGES")
    load(_resolve(STAGES[stage][0]), CONFIGS / path)


@pytest.mark.parametrize("path", sorted(p.relative_to(CONFIGS).as_posix() for p in CONFIGS.glob("profiles/*.yaml")))
def test_profile_layers_onto_tiny(path, tmp_path):
    """A memory profile is a partial train config: layered under a recipe with `defaults:`."""
    from rayft.train.config import TrainConfig

    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"defaults: {CONFIGS / path}\n" + (CONFIGS / "tiny.yaml").read_text())
    load(TrainConfig, recipe)


@pytest.mark.parametrize("name", ["ray-up.yaml", "kuberay-rayjob.yaml", "start_local_head.sh"])
def test_cluster_configs_enable_token_auth_and_loopback(name):
    import yaml

    path = CONFIGS.parent / "cluster" / name
    text = path.read_text()
    if name.endswith(".yaml"):
        yaml.safe_load(text)
    assert "RAY_AUTH_MODE" in text and "token" in text
    if name != "kuberay-rayjob.yaml":  # in-pod networking is the k8s cluster's boundary
        assert "127.0.0.1" in text and "0.0.0.0" not in text
