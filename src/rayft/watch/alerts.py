"""Alert sinks: generic JSON webhook, Slack-compatible webhook, Telegram Bot API, e-mail (SMTP
with STARTTLS). Standard library only (urllib, smtplib).

Every event goes to ``alerts.jsonl`` in the watch directory and to each configured sink.
Each sink has its own worker thread and queue: events arrive in order, a slow or refusing
sink never blocks the daemon; a failed delivery is retried ``alerts.retries`` times with
backoff, then logged (masked) and dropped. Identical alerts (event, line, text) are sent at
most once per ``alerts.rate_limit_s``. Secrets (tokens, passwords, webhook URLs) come from
environment variables and are replaced by ``***`` in every log line and alert text.
"""
from __future__ import annotations

import json
import os
import queue
import smtplib
import ssl
import sys
import threading
import time
import urllib.parse
import urllib.request
from email.message import EmailMessage
from pathlib import Path

from ..storage import append_jsonl
from .config import AlertSection

EVENTS = ("started", "stopped", "new_data", "stage_started", "stage_finished", "stage_failed", "accepted",
          "rejected", "guard", "failed", "paused", "resumed", "skipped", "resources", "resources_ok",
          "window")


class Masker:
    """Replaces every known secret (and every webhook URL's path) with ``***``."""

    def __init__(self, secrets: list[str]):
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "***")
        return text

    @staticmethod
    def url(url: str) -> str:
        p = urllib.parse.urlsplit(url)
        return f"{p.scheme}://{p.netloc}/***" if p.path not in ("", "/") else f"{p.scheme}://{p.netloc}"


def _post(url: str, payload: dict | bytes, timeout: float, form: bool = False) -> None:
    if form:
        body, ctype = urllib.parse.urlencode(payload).encode(), "application/x-www-form-urlencoded"
    else:
        body, ctype = json.dumps(payload, ensure_ascii=False, default=str).encode(), "application/json"
    req = urllib.request.Request(url, data=body, headers={"Content-Type": ctype, "User-Agent": "rayft-watch"},
                                 method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - configured URLs only
        r.read()


class Sink:
    name = "sink"

    def send(self, ev: dict, timeout: float) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class WebhookSink(Sink):
    name = "webhook"

    def __init__(self, url: str):
        self.url = url

    def send(self, ev, timeout):
        _post(self.url, ev, timeout)


class SlackSink(Sink):
    name = "slack"

    def __init__(self, url: str):
        self.url = url

    def send(self, ev, timeout):
        _post(self.url, {"text": f"[rayft watch] {ev['text']}"}, timeout)


class TelegramSink(Sink):
    name = "telegram"

    def __init__(self, api: str, token: str, chat: str):
        self.url, self.chat = f"{api.rstrip('/')}/bot{token}/sendMessage", chat

    def send(self, ev, timeout):
        _post(self.url, {"chat_id": self.chat, "text": f"[rayft watch] {ev['text']}"}, timeout)


class EmailSink(Sink):
    name = "email"

    def __init__(self, a: AlertSection, user: str, password: str):
        self.a, self.user, self.password = a, user, password

    def send(self, ev, timeout):
        a = self.a
        msg = EmailMessage()
        msg["From"], msg["To"] = a.email_from, ", ".join(a.email_to)
        msg["Subject"] = f"[rayft watch] {ev['event']}" + (f" ({ev['line']})" if ev.get("line") else "")
        msg.set_content(ev["text"] + "\n\n" + json.dumps(ev, indent=2, ensure_ascii=False, default=str))
        with smtplib.SMTP(a.smtp_host, a.smtp_port, timeout=timeout) as s:
            s.ehlo()
            if a.smtp_starttls:
                ctx = ssl.create_default_context(cafile=a.smtp_ca_file or os.environ.get("RAYFT_SMTP_CA_FILE") or None)
                s.starttls(context=ctx)
                s.ehlo()
            if self.user:
                s.login(self.user, self.password)
            s.send_message(msg)


def build_sinks(a: AlertSection, env: dict | None = None) -> tuple[list[Sink], Masker]:
    env = os.environ if env is None else env
    sinks: list[Sink] = []
    secrets: list[str] = []
    hook = (env.get(a.webhook_env) if a.webhook_env else "") or a.webhook
    if hook:
        sinks.append(WebhookSink(hook))
        secrets.append(urllib.parse.urlsplit(hook).path.strip("/"))
    slack = env.get(a.slack_webhook_env, "") if a.slack_webhook_env else ""
    if slack:
        sinks.append(SlackSink(slack))
        secrets.append(urllib.parse.urlsplit(slack).path.strip("/"))
    token = env.get(a.telegram_token_env, "") if a.telegram_token_env else ""
    chat = env.get(a.telegram_chat_env, "") if a.telegram_chat_env else ""
    if token and chat:
        sinks.append(TelegramSink(a.telegram_api, token, chat))
        secrets.append(token)
    if a.email_to:
        user = env.get(a.smtp_user_env, "") if a.smtp_user_env else ""
        pw = env.get(a.smtp_password_env, "") if a.smtp_password_env else ""
        sinks.append(EmailSink(a, user, pw))
        secrets.append(pw)
    return sinks, Masker(secrets)


class Alerter:
    """``alert(event, text, line=..., **data)``: log, rate-limit, fan out to the sinks."""

    def __init__(self, a: AlertSection, watch_dir: str | Path, sinks: list[Sink] | None = None,
                 masker: Masker | None = None, log=None):
        self.a, self.dir = a, Path(watch_dir)
        if sinks is None:
            sinks, masker = build_sinks(a)
        self.sinks, self.mask = sinks, masker or Masker([])
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.recent: dict[tuple, float] = {}
        self.failures: dict[str, int] = {s.name: 0 for s in self.sinks}
        self.queues = {s.name: queue.Queue() for s in self.sinks}
        self.threads = [threading.Thread(target=self._worker, args=(s,), daemon=True, name=f"alert-{s.name}")
                        for s in self.sinks]
        for t in self.threads:
            t.start()

    def alert(self, event: str, text: str, line: str = "", **data) -> dict | None:
        now = time.time()
        text = self.mask(text)
        key = (event, line, text)
        if self.a.rate_limit_s and now - self.recent.get(key, -1e18) < self.a.rate_limit_s:
            return None
        self.recent[key] = now
        ev = {"event": event, "line": line, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now)),
              "ts": now, "text": text, "watch_dir": str(self.dir), "data": json.loads(self.mask(
                  json.dumps(data, ensure_ascii=False, default=str)))}
        append_jsonl(self.dir / "alerts.jsonl", ev)
        self.log(f"[rayft watch] {event}{' ' + line if line else ''}: {text}")
        if self.a.events and event not in self.a.events:
            return ev
        for q in self.queues.values():
            q.put(ev)
        return ev

    def _worker(self, sink: Sink) -> None:
        q = self.queues[sink.name]
        while True:
            ev = q.get()
            try:
                if ev is None:
                    return
                for attempt in range(1, max(1, self.a.retries) + 1):
                    try:
                        sink.send(ev, self.a.timeout_s)
                        break
                    except Exception as e:  # noqa: BLE001 - a sink never stops the loop
                        msg = self.mask(f"{type(e).__name__}: {e}")
                        self.log(f"[rayft watch] alert sink {sink.name}: attempt {attempt}/{self.a.retries} "
                                 f"for {ev['event']} failed: {msg}")
                        if attempt < self.a.retries:
                            time.sleep(self.a.retry_backoff_s * 2 ** (attempt - 1))
                        else:
                            self.failures[sink.name] += 1
            finally:
                q.task_done()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait (up to ``timeout`` s) until every queued event was delivered or given up."""
        end = time.time() + timeout
        for q in self.queues.values():
            while q.unfinished_tasks and time.time() < end:
                time.sleep(0.05)

    def close(self, timeout: float = 30.0) -> None:
        self.flush(timeout)
        for q in self.queues.values():
            q.put(None)
