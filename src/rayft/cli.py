"""``rayft <stage> --config configs/x.yaml key=value ...``

Each subcommand calls the same function its ``jobs/<stage>.py`` file calls. Config
errors and bad input exit with one clear message (exit code 2), not a traceback.
"""
from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys

from pydantic import ValidationError

from .config import ConfigError, StageRefused, format_error, help_text, load, mask_secrets, to_dict

#: subcommand -> (config class, run function, one-line description, key aliases).
#: Modules load lazily so `rayft --help` stays fast.
STAGES: dict[str, tuple[str, str, str, dict]] = {
    "train": ("rayft.train.config:TrainConfig", "rayft.train.launch:run_training",
              "fine-tune a causal LM (LoRA or full) on Ray Train; prints the run directory last", {}),
    "sweep": ("rayft.tune.config:SweepConfig", "rayft.tune.sweep:run_sweep",
              "Ray Tune sweep (ASHA, random/Optuna) over the `rayft train` loop; prints the best run dir last", {}),
    "export": ("rayft.train.export:ExportConfig", "rayft.train.export:run_export",
               "merge a run's LoRA adapter into its base model and save a full safetensors model", {}),
    "curate": ("rayft.curate.config:CurateConfig", "rayft.curate.run:run_curate",
               "filter, dedup and language-route pair files into curated Parquet splits",
               {"input": "data.path", "output": "output.dir"}),
    "frames embed": ("rayft.frames.config:FramesConfig", "rayft.frames.run:run_embed",
                     "embed video frames with open_clip on Ray Data -> Parquet",
                     {"input": "embed.input", "output": "embed.output"}),
    "frames cluster": ("rayft.frames.config:FramesConfig", "rayft.frames.cluster.run:run_cluster",
                       "cluster frame embeddings into characters (PCA + HDBSCAN)",
                       {"input": "cluster.input", "output": "cluster.output"}),
    "frames export": ("rayft.frames.config:FramesConfig", "rayft.frames.export:run_export",
                      "export one training folder per character cluster with captions and contact sheets",
                      {"input": "export.input", "output": "export.output"}),
    "frames train": ("rayft.frames.config:FramesConfig", "rayft.frames.train:run_frames_train",
                     "train one image LoRA per character folder (diffusers + peft, one Ray Tune trial each)",
                     {"input": "train.input", "output": "train.output", "model.name": "train.model"}),
    "frames segment": ("rayft.frames.config:FramesConfig", "rayft.frames.segment:run_segment",
                       "optional: character-only RGBA crops of every frame (ONNX model, onnxruntime on Ray Data)",
                       {"input": "segment.input", "output": "segment.output"}),
    "eval": ("rayft.evaluate.config:EvalConfig", "rayft.evaluate.run:run_eval_cli",
             "score a candidate run vs the champion (or base) on val + golden with Ray Data; gate; eval.json",
             {"run": "candidate"}),
    "registry list": ("rayft.registry.commands:RegistryConfig", "rayft.registry.commands:run_list",
                      "list registry versions with aliases, scores and gate decisions", {}),
    "registry show": ("rayft.registry.commands:RegistryConfig", "rayft.registry.commands:run_show",
                      "print a version's manifest (lineage, metrics, artifact hashes)", {}),
    "registry add": ("rayft.registry.commands:RegistryConfig", "rayft.registry.commands:run_add",
                     "register a finished run (with its eval.json) as a new immutable version", {}),
    "registry promote": ("rayft.registry.commands:RegistryConfig", "rayft.registry.commands:run_promote",
                         "make a version the champion (hash-checked, gate-checked)", {}),
    "registry rollback": ("rayft.registry.commands:RegistryConfig", "rayft.registry.commands:run_rollback",
                          "move champion back to the previous version", {}),
    "registry cleanup": ("rayft.registry.commands:RegistryConfig", "rayft.registry.commands:run_cleanup",
                         "keep the N best versions, never deleting champion or previous", {}),
    "registry context": ("rayft.registry.commands:RegistryConfig", "rayft.registry.commands:run_context",
                         "set (file=...), clear (clear=true) or show a line's context block, served in the "
                         "system turn of every chat request (memory injection without training)", {}),
    "watch": ("rayft.watch.config:WatchConfig", "rayft.watch.daemon:run_watch",
              "daemon: new data -> curate -> train -> gate -> register -> promote (served), with alerts; "
              "`rayft watch status|pause [line]|resume [line]|stop dir=...` controls it",
              {"input": "watch.input", "dir": "watch.dir", "once": "watch.once", "recipe": "train.recipe"}),
    "data inspect": ("rayft.data.inspect:InspectConfig", "rayft.data.inspect:run_inspect",
                     "what training would do with a dataset: formats, rows kept/rejected by reason, token "
                     "lengths and truncation (histogram PNG); no Ray", {}),
    "serve": ("rayft.serve.config:ServeConfig", "rayft.serve.run:run_serve",
              "host the registry champions on Ray Serve behind an OpenAI-compatible API", {}),
}


def _resolve(spec: str):
    mod, name = spec.split(":")
    return getattr(importlib.import_module(mod), name)


def _groups() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for name in STAGES:
        head, _, sub = name.partition(" ")
        groups.setdefault(head, []).append(sub)
    return groups


def _add_stage(sp, name: str, prog_name: str) -> None:
    cfg_spec, _, desc, aliases = STAGES[name]
    p = sp.add_parser(prog_name, help=desc, description=desc,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", "-c", help="YAML config file (see configs/)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("--verbose", "-v", action="store_true",
                   help="show Ray's own output on the console too (also RAYFT_VERBOSE=1); by default it goes "
                        "to the logs (train: <run dir>/logs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override any config key (dotted)")
    p.set_defaults(stage=name)
    p._rayft_cfg = cfg_spec  # help text is built lazily in format_help
    p._rayft_aliases = aliases
    orig = p.format_help

    def format_help(orig=orig, p=p):
        try:
            extra = help_text(_resolve(p._rayft_cfg), p._rayft_aliases)
        except ImportError as e:  # stage not installed
            extra = f"(config unavailable: {e})"
        return orig() + "\n" + extra + "\n"

    p.format_help = format_help


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="rayft", description=(
        "rayft: Ray-native fine-tuning. Curate pairs, embed and cluster frames, train LoRA/full "
        "fine-tunes on Ray Train (DeepSpeed), sweep with Ray Tune, evaluate, register and serve.\n"
        "Every subcommand takes --config FILE and key=value overrides; `rayft SUBCOMMAND --help` "
        "lists every key."), formatter_class=argparse.RawDescriptionHelpFormatter)
    sp = ap.add_subparsers(dest="command", metavar="SUBCOMMAND")
    for head, subs in _groups().items():
        if subs == [""]:
            _add_stage(sp, head, head)
        else:
            gp = sp.add_parser(head, help=f"{head} stages: {', '.join(subs)}")
            gsp = gp.add_subparsers(dest="subcommand", metavar="STEP")
            for s in subs:
                _add_stage(gsp, f"{head} {s}", s)
    return ap


def _unknown_command(argv: list[str]) -> str | None:
    """'rayft trian' -> "unknown command 'trian'; did you mean 'train'?" (None when argv is fine)."""
    groups = _groups()
    words = [a for a in argv if not a.startswith("-")][:2]
    if not words or argv[0].startswith("-"):
        return None
    head = words[0]
    if head not in groups:
        near = difflib.get_close_matches(head, list(groups), n=1, cutoff=0.5)
        hint = f"; did you mean '{near[0]}'?" if near else f"; commands: {', '.join(groups)}"
        return f"unknown command '{head}'{hint}"
    subs = [s for s in groups[head] if s]
    if subs and len(words) > 1 and words[1] not in subs and "=" not in words[1]:
        near = difflib.get_close_matches(words[1], subs, n=1, cutoff=0.5)
        hint = f"; did you mean '{head} {near[0]}'?" if near else f"; steps: {', '.join(subs)}"
        return f"unknown command '{head} {words[1]}'{hint}"
    return None


def print_config(cfg) -> str:
    """The resolved config as YAML, secrets (api keys, tokens, passwords) shown as ***."""
    import yaml

    return yaml.safe_dump(mask_secrets(to_dict(cfg), type(cfg)), sort_keys=False, allow_unicode=True)


def stage_config(stage: str, config: str | None, overrides: list[str]):
    """The validated config a stage would run with (``--config`` file + ``key=value`` items);
    ConfigError otherwise. What ``main`` does before calling the stage."""
    cfg_spec, _, _, aliases = STAGES[stage]
    cls = _resolve(cfg_spec)
    try:
        return load(cls, config, overrides, aliases)
    except ValidationError as e:  # a config class built outside load()'s error handling
        raise ConfigError(format_error(e, cls)) from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["watch"] and len(argv) > 1 and argv[1] in ("status", "pause", "resume", "stop"):
        from .watch.control import main as watch_control
        return watch_control(argv[1:])
    bad = _unknown_command(argv)
    if bad:
        print(f"rayft: error: {bad}", file=sys.stderr)
        return 2
    ap = build_parser()
    args = ap.parse_args(argv)
    if not getattr(args, "stage", None):
        ap.print_help()
        return 2
    fn_spec = STAGES[args.stage][1]
    if args.verbose:
        os.environ["RAYFT_VERBOSE"] = "1"
    from .data.formats import DataError
    try:
        cfg = stage_config(args.stage, args.config, args.overrides)
        if args.print_config:
            print(print_config(cfg))
            return 0
        result = _resolve(fn_spec)(cfg)
    except (ConfigError, DataError) as e:
        print(f"rayft {args.stage}: error: {e}", file=sys.stderr)
        return 2
    except StageRefused as e:
        print(e.result)
        print(f"rayft {args.stage}: {e}", file=sys.stderr)
        return e.code
    if result is not None:
        print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
