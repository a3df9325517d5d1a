"""Mistakes answered helpfully (issue 21 item 2), through `rayft.cli.main` (no Ray): a mistyped
key=value is blamed on the command line, never the YAML file, with a did-you-mean; the same
for stage names and enumerations. Pure."""
from __future__ import annotations

import pytest

from rayft.cli import main


@pytest.fixture
def recipe(tmp_path):
    p = tmp_path / "recipe.yaml"
    p.write_text("data:\n  path: pairs.jsonl\ntrain:\n  max_steps: 10\n  lr: 0.001\n")
    return str(p)


@pytest.mark.parametrize("argv, expected", [
    (["train.max_step=5"], "command line: unknown config key 'train.max_step'; did you mean 'train.max_steps'?"),
    (["trian.max_steps=5"], "command line: unknown config key 'trian.max_steps'; did you mean 'train.max_steps'?"),
    (["max_steps=5"], "command line: unknown config key 'max_steps'; did you mean 'train.max_steps'?"),
    (["train.max_steps"], "command line: 'train.max_steps' has no value; write train.max_steps=VALUE"),
    (["train.max_stepz"], "command line: 'train.max_stepz' is not of the form key=value; did you mean "
                          "'train.max_steps'?"),
    (["train.strategy=zero"], "command line: train.strategy: expected one of ['ddp', 'zero2', 'zero3'], got "
                              "'zero'; did you mean 'zero3'?"),
    (["tracking=[tensorbord]"], "command line: tracking[0]: expected one of ['tensorboard', 'mlflow', 'wandb'], "
                                "got 'tensorbord'; did you mean 'tensorboard'?"),
    (["wandb.mode=onlin"], "did you mean 'online'?"),
    (["mlflow.uri=http://alice:pw123@127.0.0.1:5000"], "command line: mlflow.uri: http://127.0.0.1:5000 carries "
                                                        "credentials; give them in MLFLOW_TRACKING_USERNAME/"),
    (["train.lr=-1"], "command line: train.lr: expected a number > 0, got -1"),
])
def test_override_mistakes_blame_the_command_line(recipe, capsys, argv, expected):
    rc = main(["train", "--config", recipe, *argv, "--print-config"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert expected in err, err
    assert recipe not in err and "Traceback" not in err and "pw123" not in err


def test_config_file_given_without_the_flag(tmp_path, capsys):
    """`rayft train configs/tiny.yaml` (a path where a key=value goes) points at --config."""
    assert main(["train", "configs/tiny.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("'configs/tiny.yaml' is not of the form key=value; a config file goes after "
                        "--config: --config configs/tiny.yaml"), err


def test_yaml_mistake_still_blames_the_file(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("data:\n  path: pairs.jsonl\ntrain:\n  max_stepz: 10\n")
    assert main(["train", "--config", str(p), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert f"{p}:4: unknown config key 'train.max_stepz'; did you mean 'train.max_steps'?" in err


@pytest.mark.parametrize("argv, expected", [
    (["trian"], "unknown command 'trian'; did you mean 'train'?"),
    (["registry", "promot"], "unknown command 'registry promot'; did you mean 'registry promote'?"),
    (["sweeep"], "unknown command 'sweeep'; did you mean 'sweep'?"),
])
def test_stage_names(capsys, argv, expected):
    assert main(argv) == 2
    assert expected in capsys.readouterr().err
