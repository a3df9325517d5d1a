"""WatchConfig: everything `rayft watch` reads, field by field.

Watch directory layout (``watch.dir``)::

    state.json            cycle / stage / attempt per line (atomic; the restart point)
    control.json          pause / resume / stop commands from `rayft watch pause|resume|stop`
    status.json           what the daemon is doing (also `rayft watch status`)
    dashboard.html        static, auto-refreshing page: champions, score history, last cycle, alerts
    alerts.jsonl          every alert event (secrets masked)
    inbox/<ingest>/       snapshots of the stable new files handed to `rayft curate`
    curated/              the `rayft curate` output (its _ledger/ is the ingestion bookkeeping)
    lines/<line>/runs/<cycle>-<stage>/   one normal `rayft train` run per stage (kept)
    lines/<line>/cycles/<cycle>/         replay mix, eval.json of the cycle
    lines/<line>/versions.csv            version, time, data hash, model hash, command line
    registry/             the registry the daemon promotes into (`rayft serve registry=...`)
"""
from __future__ import annotations

from pydantic import ValidationInfo, model_validator

from ..config import ConfigError, LocalPath, Section, complete, opt, section
from .policy import parse_window


class WatchSection(Section):
    input: list[str] = opt([], "data to watch: directories (their .jsonl/.json/.parquet files, recursively) "
                           "and/or globs; alias input=")
    dir: LocalPath = opt("runs/watch", "watch directory: state, status, dashboard, curated data, runs, registry; "
                   "alias dir=")
    once: bool = opt(False, "run cycles until no new data is left, then exit 0 (alias once=); false: keep "
                     "watching")
    detached: bool = opt(False, "start the daemon under a detached Ray actor that restarts it (and is "
                         "restarted by Ray) until `rayft watch stop`; the command returns at once "
                         "(see rayft.watch.detached)")
    poll_s: float = opt(30.0, "seconds between scans of watch.input", gt=0)
    settle_s: float = opt(2.0, "once=true: seconds between the two scans that prove a file is no longer "
                          "being written (size and mtime unchanged)", ge=0)
    lines: list[str] = opt([], "model lines = languages routed by curate (e.g. [en, zh]); empty: every "
                           "language curate produces")
    window: str = opt("", "train only inside this local-time window, e.g. '02:00-06:00' (may wrap midnight); "
                      "'' = always. Detection, curation and alerts run always")
    max_retries: int = opt(3, "attempts per stage (first try included) before the line is paused with an alert", ge=1)
    backoff_s: float = opt(30.0, "wait before the 2nd attempt; doubles per attempt", ge=0)
    backoff_max_s: float = opt(600.0, "longest wait between attempts", ge=0)
    full_every: int = opt(0, "every N-th cycle of a line retrains from the base (warm-up + full) instead of "
                          "incrementally from the champion (0: never)", ge=0)
    warmup_epochs: float = opt(1.0, "warm-up stage on the line's golden split before the first full run "
                               "(epochs; 0 skips warm-up)", ge=0)
    replay_ratio: float = opt(1.0, "incremental stage: old rows replayed per new row (1.0 = 1:1), sampled "
                              "deterministically by row hash", ge=0)
    replay_salt: str = opt("", "salt of the replay sample (change to draw a different sample)")
    min_gain: float = opt(0.005, "skip a scheduled retrain of a line without new data when its last accepted "
                          "improvement was below this (0.005 = 0.5 %)")
    schedule_every_s: float = opt(0.0, "also retrain each line this often without new data (0: only on new "
                                  "data); subject to watch.min_gain", ge=0)
    keep_best: int = opt(5, "registry versions kept per line (the best N; champion and previous always kept)", ge=1)
    keep_checkpoints: int = opt(2, "training checkpoints kept per line (the newest K; run reports kept)", ge=1)

    @model_validator(mode="after")
    def _window(self):
        parse_window(self.window)
        return self


class StageSection(Section):
    recipe: str = opt("configs/tiny.yaml", "train: the `rayft train` YAML every stage starts from (alias "
                      "recipe=); run.dir, run.name and data.* are set by the daemon")
    overrides: list[str] = opt([], "key=value overrides applied to the train recipe for every stage")


class CurateSection(Section):
    config: str = opt("configs/curate.yaml", "the `rayft curate` YAML ('' = defaults); data.path and "
                      "output.dir are set by the daemon")
    overrides: list[str] = opt([], "key=value overrides for curate, e.g. [split.golden_fraction=0.1]")


class EvalSection(Section):
    config: str = opt("configs/eval.yaml", "the `rayft eval` YAML (gate rules); candidate, data.curated, "
                      "registry.* are set by the daemon")
    overrides: list[str] = opt([], "key=value overrides for eval, e.g. [score.similarity=chrf]")


class ResourceSection(Section):
    max_memory_percent: float = opt(85.0, "pause training while node memory use is above this (percent)", gt=0, le=100)
    min_disk_free_gb: float = opt(5.0, "pause training while free disk under watch.dir is below this (GB)", ge=0)


class AlertSection(Section):
    webhook: str = opt("", "generic JSON webhook URL: one POST per event with event, line, time, text, data")
    webhook_env: str = opt("", "environment variable holding the webhook URL (keeps tokens out of files)")
    slack_webhook_env: str = opt("RAYFT_SLACK_WEBHOOK", "environment variable holding a Slack-compatible "
                                 "incoming-webhook URL (used when set)")
    telegram_token_env: str = opt("RAYFT_TELEGRAM_TOKEN", "environment variable holding the Telegram bot token")
    telegram_chat_env: str = opt("RAYFT_TELEGRAM_CHAT_ID", "environment variable holding the Telegram chat id "
                                 "(Telegram is used when both are set)")
    telegram_api: str = opt("https://api.telegram.org", "Telegram Bot API base URL")
    email_to: list[str] = opt([], "e-mail recipients (empty: no e-mail)")
    email_from: str = opt("rayft-watch@localhost", "sender address")
    smtp_host: str = opt("127.0.0.1", "SMTP server")
    smtp_port: int = opt(587, "SMTP port", ge=1, le=65535)
    smtp_starttls: bool = opt(True, "upgrade the SMTP connection with STARTTLS (required unless false)")
    smtp_user_env: str = opt("RAYFT_SMTP_USER", "environment variable holding the SMTP user (login when set)")
    smtp_password_env: str = opt("RAYFT_SMTP_PASSWORD", "environment variable holding the SMTP password")
    smtp_ca_file: str = opt("", "CA bundle (PEM) to verify the SMTP server's certificate for STARTTLS ('': the "
                            "system's; $RAYFT_SMTP_CA_FILE also works)")
    events: list[str] = opt([], "send only these events (empty: all); see README for the event names")
    retries: int = opt(3, "attempts per sink and event", ge=1)
    retry_backoff_s: float = opt(1.0, "wait before the 2nd attempt; doubles per attempt", ge=0)
    timeout_s: float = opt(10.0, "network timeout per attempt", gt=0)
    rate_limit_s: float = opt(300.0, "an identical alert (same event, line and text) is sent at most once "
                              "in this many seconds", ge=0)


class RaySection(Section):
    address: str = opt("", "Ray cluster ('' : RAY_ADDRESS when set (ray job submit), else a local Ray)")
    num_cpus: int = opt(0, "CPUs of a local Ray started by the daemon (0: all)", ge=0)


class WatchConfig(Section):
    watch: WatchSection = section(WatchSection, "what to watch, where to keep state, policies")
    train: StageSection = section(StageSection, "the training recipe of every stage")
    curate: CurateSection = section(CurateSection, "curation of new files")
    eval: EvalSection = section(EvalSection, "the gate against the champion")
    resources: ResourceSection = section(ResourceSection, "training pauses above these thresholds")
    alerts: AlertSection = section(AlertSection, "alert sinks (any number at once)")
    ray: RaySection = section(RaySection, "Ray")

    @model_validator(mode="after")
    def _required(self, info: ValidationInfo):
        if complete(info) and not self.watch.input:
            raise ConfigError("watch.input is required: a data directory or glob (alias input=...)")
        return self


ALIASES = {"input": "watch.input", "dir": "watch.dir", "once": "watch.once", "recipe": "train.recipe"}
