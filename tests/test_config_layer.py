"""The config layer (rayft.config on pydantic v2) and the CLI's argument handling. No Ray.

One-line errors naming the key and where it came from, did-you-mean, type-directed
``key=value`` parsing, ``defaults:`` layering, secrets masked by ``--print-config``, every
key documented in ``--help``, and every ``rayft ...`` command line of the README parsing.
"""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from rayft.cli import STAGES, _resolve, main, print_config, stage_config
from rayft.config import (ConfigError, Section, describe, from_dict, is_secret_name, load, mask_secrets,
                          parse_overrides, to_dict)
from rayft.serve.config import ServeConfig
from rayft.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def cli_error(capsys, *argv: str) -> str:
    """Run the CLI; it must exit 2 with exactly one line on stderr (no traceback)."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


# -- one-line errors naming the key ---------------------------------------------------------------

@pytest.mark.parametrize("argv,expected", [
    (["serve", "port=inf"], "command line: port: expected an integer, got inf"),
    (["serve", "port=1e400"], "command line: port: expected an integer, got 1e400"),
    (["serve", "port=.nan"], "command line: port: expected an integer, got .nan"),
    (["serve", "port=0"], "command line: port: expected an integer >= 1 and <= 65535, got 0"),
    (["serve", "num_cpus=nan"], "command line: num_cpus: expected a finite number, got nan"),
    (["train", "--config", str(TINY), "train.max_steps=0"],
     "command line: train.max_steps: expected an integer >= 1, got 0"),
    (["train", "--config", str(TINY), "train.lr=1e400"], "command line: train.lr: expected a finite number"),
    (["train", "--config", str(TINY), "model.dtype=bf16"],
     "command line: model.dtype: expected one of ['auto', 'float32', 'bfloat16', 'float16'], got 'bf16'; "
     "did you mean 'bfloat16'?"),
    (["train", "--config", str(TINY), "train.max_stpes=3"],
     "command line: unknown config key 'train.max_stpes'; did you mean 'train.max_steps'?"),
    (["train", "--config", str(TINY), "max_steps=3"],
     "command line: unknown config key 'max_steps'; did you mean 'train.max_steps'?"),
    (["train", "--config", str(TINY), "train.strategy=ddp", "train.offload_optimizer=cpu"],
     "need a DeepSpeed strategy"),
    (["train", "--config", str(TINY), "data.path="], "data.path is required"),
    (["curate", "input=x", "output=y", "dedup.fields=[prompt,answer]"], "dedup.fields[1]: expected one of"),
    (["curate", "input=x", "output=y", "secrets.card=hide"], "secrets.card: expected one of ['drop', 'mask', 'off']"),
    (["sweep", "sweep.name=../x"], "sweep.name: expected a plain directory name"),
    (["trian"], "unknown command 'trian'; did you mean 'train'?"),
    (["frames", "embd"], "unknown command 'frames embd'; did you mean 'frames embed'?"),
])
def test_bad_values_are_one_line_naming_the_key(capsys, argv, expected):
    assert expected in cli_error(capsys, *argv)


def test_a_secret_value_is_never_echoed():
    with pytest.raises(ConfigError) as e:
        from_dict(ServeConfig, {"api_key": ["secret-value"]})
    assert str(e.value) == "api_key: expected a string, got <hidden>"


def _write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def test_file_errors_name_the_file_and_line(tmp_path, capsys):
    bad = _write(tmp_path, "a.yaml", f"defaults: {TINY}\ntrain:\n  max_steps: 0\n")
    assert f"{bad}:3: train.max_steps: expected an integer >= 1, got 0" in cli_error(capsys, "train", "-c", str(bad))
    typo = _write(tmp_path, "b.yaml", f"defaults: {TINY}\ntrain:\n  max_stepz: 3\n")
    assert (f"{typo}:3: unknown config key 'train.max_stepz'; did you mean 'train.max_steps'?"
            in cli_error(capsys, "train", "-c", str(typo)))
    # the same typo on the command line is blamed on the command line, not the file
    assert cli_error(capsys, "train", "-c", str(TINY), "train.max_stepz=3").startswith(
        "rayft train: error: command line: unknown config key 'train.max_stepz'")


@pytest.mark.parametrize("name,text,expected", [
    ("self.yaml", "defaults: self.yaml\n", "defaults: includes itself"),
    ("map.yaml", "defaults: {a: 1}\n", ":1: defaults: expected a file path or a list of file paths"),
    ("num.yaml", "defaults: [3]\n", "defaults: expected a file path"),
    ("empty.yaml", "defaults: ''\n", "defaults: expected a file path"),
    ("missing.yaml", "defaults: nowhere.yaml\n", "config file not found"),
    ("latin1.yaml", b"train:\n  max_steps: 3\nrun:\n  name: caf\xe9\n", ":4: not UTF-8 text"),
    ("list.yaml", "- a\n- b\n", "expected a mapping of config keys at the top level, got list"),
    ("scalar.yaml", "just text\n", "expected a mapping of config keys at the top level, got str"),
    ("broken.yaml", "train:\n  lr: [1,\n", "not valid YAML: line"),
    ("tabs.yaml", "train:\n\tlr: 1\n", "not valid YAML"),
])
def test_bad_config_files_are_one_line(tmp_path, capsys, name, text, expected):
    p = _write(tmp_path, name, text)
    assert expected in cli_error(capsys, "train", "-c", str(p))


def test_defaults_cycle_and_layering(tmp_path, capsys):
    a = _write(tmp_path, "a.yaml", "defaults: b.yaml\ntrain: {max_steps: 5}\n")
    _write(tmp_path, "b.yaml", "defaults: a.yaml\n")
    assert "defaults: cycle" in cli_error(capsys, "train", "-c", str(a))
    base = _write(tmp_path, "base.yaml", f"defaults: {TINY}\ntrain: {{max_steps: 7, lr: 0.001}}\n")
    top = _write(tmp_path, "top.yaml", "defaults: [base.yaml]\ntrain: {max_steps: 9}\n")
    cfg = load(TrainConfig, top, ["train.lr=0.002"])
    assert cfg.train.max_steps == 9 and cfg.train.lr == 0.002 and cfg.data.path  # tiny.yaml's data survives
    assert base.exists()


# -- overrides parsed by the type of the field they set -------------------------------------------

def test_string_fields_take_the_text_as_written():
    cfg = load(ServeConfig, None, ["api_key=0123", "app_name=12:30", "models=[no, en, 0123]",
                                   "languages={no: no, en: en}", "default_model=no", "route_prefix=/v1"])
    assert cfg.api_key == "0123" and cfg.app_name == "12:30"
    assert cfg.models == ["no", "en", "0123"] and cfg.languages == {"no": "no", "en": "en"}
    assert cfg.default_model == "no"
    assert load(ServeConfig, None, ["models=en,zh"]).models == ["en", "zh"]  # comma form
    t = load(TrainConfig, TINY, ["generate.prompt=Rewrite: the detective opens the letter.",
                                 "run.name=2024", "lora.target_modules=[q_proj, v_proj]",
                                 "data.system_prompt=- a list? no: a string", "train.lr=1e-4",
                                 "train.gradient_checkpointing=yes", "scaling.num_workers=1"])
    assert t.generate.prompt == "Rewrite: the detective opens the letter." and t.run.name == "2024"
    assert t.data.system_prompt == "- a list? no: a string"
    assert t.lora.target_modules == ["q_proj", "v_proj"] and t.train.lr == 1e-4
    assert t.train.gradient_checkpointing is True and t.scaling.num_workers == 1
    # untyped mappings (the sweep's space) still read YAML
    raw = parse_overrides(["space.train.lr={loguniform: [1e-4, 1e-2]}"])
    assert raw == {"space": {"train": {"lr": {"loguniform": ["1e-4", "1e-2"]}}}}


def test_aliases_and_round_trip():
    cfg = load(_resolve(STAGES["curate"][0]), REPO / "configs" / "curate.yaml", ["input=a/b", "output=o"],
               STAGES["curate"][3])
    assert cfg.data.path == "a/b" and cfg.output.dir == "o"
    for stage, (spec, *_rest) in STAGES.items():
        cls = _resolve(spec)
        assert cls.model_validate(to_dict(cls())) == cls(), stage
    tiny = load(TrainConfig, TINY)
    assert from_dict(TrainConfig, to_dict(tiny)) == tiny  # what crosses the Ray boundary
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.lrr'; did you mean 'train\.lr'\?"):
        from_dict(TrainConfig, {"data": {"path": "x"}, "train": {"lrr": 1}})


def test_assignment_is_validated_and_defaults_build():
    cfg = TrainConfig()  # defaults build although data.path (required to run) is empty
    cfg.train.max_steps = 5
    with pytest.raises(ConfigError, match="max_steps: expected an integer >= 1, got 0"):
        cfg.train.max_steps = 0
    with pytest.raises(ConfigError, match="expected one of"):
        cfg.model.dtype = "bf16"
    assert cfg.train.max_steps == 5


def test_every_stage_config_is_a_pydantic_section():
    """No stage config is left on stdlib dataclasses (their keys would go unchecked by pydantic)."""
    def walk(cls, path):
        assert isinstance(cls, type) and issubclass(cls, Section), f"{path} ({cls}) is not a config Section"
        for name, f in cls.model_fields.items():
            tp = f.annotation
            if isinstance(tp, type) and (issubclass(tp, Section) or hasattr(tp, "__dataclass_fields__")):
                walk(tp, f"{path}.{name}")
    for stage, (spec, *_rest) in STAGES.items():
        walk(_resolve(spec), stage)


# -- --help and --print-config -------------------------------------------------------------------

@pytest.mark.parametrize("stage", sorted(STAGES))
def test_help_lists_every_key_with_default_and_description(stage, capsys):
    with pytest.raises(SystemExit) as e:
        main([*stage.split(), "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for key, default, hlp in describe(_resolve(STAGES[stage][0])):
        assert re.search(rf"^  {re.escape(key)} \(default {re.escape(default)}(; [^\n]*)?\)\n      {re.escape(hlp)}$",
                         out, re.M), key
        assert hlp.strip(), f"{stage}: {key} has no description"
    assert not re.search(r"\bW[1-5]\b", out), "internal workload ids in user-facing help"
    if stage == "train":
        assert "  train.max_steps (default 100; an integer >= 1)\n" in out


def test_print_config_masks_secrets(capsys):
    assert main(["serve", "--print-config", "api_key=hunter2-0123", "registry=s3://me:pw@127.0.0.1/reg"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "pw@" not in out
    d = yaml.safe_load(out)
    assert d["api_key"] == "***" and d["api_key_env"] == "RAYFT_API_KEY" and d["registry"] == "s3://127.0.0.1/reg"  # object-store credentials dropped, not masked
    cur = yaml.safe_load(print_config(stage_config("curate", str(REPO / "configs" / "curate.yaml"), [])))
    assert cur["secrets"]["api_key"] == "drop"  # an enumeration, not a secret
    nested = mask_secrets({"alerts": {"telegram_token": "123:abc", "token_env": "TG", "smtp_password": "p",
                                      "webhook": "https://hooks.example/T0/B0/xyz", "webhook_env": "HOOK",
                                      "url": "https://h/x?token=abc&a=1", "max_tokens_limit": 5}})
    assert nested == {"alerts": {"telegram_token": "***", "token_env": "TG", "smtp_password": "***",
                                 "webhook": "***", "webhook_env": "HOOK", "url": "https://h/x?token=***&a=1",
                                 "max_tokens_limit": 5}}
    assert is_secret_name("client_secret") and is_secret_name("password") and not is_secret_name("api_key_env")


# -- every command line in the README parses ------------------------------------------------------

def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    cmds = []
    for b in blocks:
        for line in b.splitlines():
            line = line.strip()
            if line.startswith("rayft "):
                cmds.append(line)
    return cmds


def test_readme_has_commands():
    assert len(readme_commands()) >= 5


@pytest.mark.parametrize("line", readme_commands())
def test_readme_command_line_parses(line, monkeypatch):
    """Each `rayft ...` line as written (shell quoting and trailing comments applied), through the
    CLI's parser and the stage's config loading (the stage itself does not run)."""
    from rayft.cli import build_parser

    monkeypatch.chdir(REPO)
    argv = shlex.split(line, comments=True)[1:]
    if argv[:1] == ["watch"] and argv[1:2] and argv[1] in ("status", "pause", "resume", "stop"):
        pytest.skip("watch control words go to rayft.watch.control, not a config")
    args = build_parser().parse_args(argv)
    cfg = stage_config(args.stage, args.config, args.overrides)
    for item in args.overrides:  # a str value set on the command line arrives as written
        key, _, raw = item.partition("=")
        key = STAGES[args.stage][3].get(key, key)
        val = cfg
        for part in key.split("."):
            val = getattr(val, part, None)
        if isinstance(val, str):
            assert val == raw, (key, val, raw)
