"""Alert sinks against real receivers on 127.0.0.1: an http.server thread (JSON webhook,
Slack, Telegram Bot API paths) and aiosmtpd with STARTTLS (self-signed cert). No Ray.
The receivers are reused by test_watch_run.py."""
from __future__ import annotations

import datetime as dt
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rayft.config import load
from rayft.storage import read_jsonl
from rayft.watch.alerts import Alerter, build_sinks
from rayft.watch.config import ALIASES, WatchConfig


class HookServer:
    """Records every POST (path, parsed body) in arrival order."""

    def __init__(self):
        got = self.got = []

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                ctype = self.headers.get("Content-Type", "")
                if "json" in ctype:
                    data = json.loads(body)
                else:
                    from urllib.parse import parse_qs
                    data = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                got.append((self.path, data))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *a):
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def events(self, path="/hook"):
        return [d for p, d in self.got if p == path]

    def close(self):
        self.srv.shutdown()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens: connections are refused
    return port


class SmtpServer:
    """aiosmtpd with STARTTLS required and a login; messages in ``self.messages``."""

    def __init__(self, tmp_path, user="watch", password="s3cret-pass"):
        import ssl

        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        import ipaddress

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                               critical=False)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        self.cert = tmp_path / "smtp-cert.pem"
        kf = tmp_path / "smtp-key.pem"
        self.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        kf.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, kf)
        self.messages = []
        self.tls_seen = []
        outer = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                outer.tls_seen.append(session.ssl is not None)
                outer.messages.append(envelope.content.decode("utf-8", "replace"))
                return "250 OK"

        def auth(server, session, envelope, mechanism, data):
            ok = isinstance(data, LoginPassword) and data.login.decode() == user and data.password.decode() == password
            return AuthResult(success=ok)

        self.port = closed_port()
        self.ctl = Controller(Handler(), hostname="127.0.0.1", port=self.port, tls_context=ctx, require_starttls=True,
                              authenticator=auth, auth_require_tls=True, ready_timeout=10)
        self.ctl.start()
        self.env = {"RAYFT_SMTP_USER": user, "RAYFT_SMTP_PASSWORD": password, "RAYFT_SMTP_CA_FILE": str(self.cert)}

    def close(self):
        self.ctl.stop()


@pytest.fixture
def hook():
    h = HookServer()
    yield h
    h.close()


def _alerts(tmp_path, *over, env=None):
    cfg = load(WatchConfig, None, ["input=x", f"dir={tmp_path}", "alerts.retry_backoff_s=0.05",
                                   "alerts.timeout_s=5", *over], ALIASES)
    sinks, masker = build_sinks(cfg.alerts, env or {})
    logs = []
    return Alerter(cfg.alerts, tmp_path, sinks, masker, log=logs.append), logs


def test_webhook_receives_every_event_in_order_and_a_refusing_sink_is_only_logged(tmp_path, hook):
    bad = f"http://127.0.0.1:{closed_port()}/hook"
    env = {"MY_HOOK": hook.url + "/hook", "RAYFT_SLACK_WEBHOOK": bad,
           "RAYFT_TELEGRAM_TOKEN": "123456:SECRET-TOKEN-abc", "RAYFT_TELEGRAM_CHAT_ID": "42"}
    al, logs = _alerts(tmp_path, "alerts.webhook_env=MY_HOOK", "alerts.telegram_api=" + hook.url, env=env)
    for i in range(5):
        assert al.alert("new_data", f"file {i}", line="en", files=[f"f{i}"])
    assert al.alert("new_data", "file 4", line="en") is None  # identical within rate_limit_s
    assert al.alert("failed", "token 123456:SECRET-TOKEN-abc leaked?", line="zh")
    al.close()
    got = hook.events("/hook")
    assert [e["text"] for e in got] == [f"file {i}" for i in range(5)] + ["token *** leaked?"]
    assert all({"event", "line", "time", "text"} <= set(e) for e in got) and got[0]["line"] == "en"
    tg = hook.events("/bot123456:SECRET-TOKEN-abc/sendMessage")
    assert len(tg) == 6 and tg[0]["chat_id"] == "42" and "file 0" in tg[0]["text"]
    assert al.failures == {"webhook": 0, "slack": 6, "telegram": 0}
    assert sum("alert sink slack: attempt 3/3" in m for m in logs) == 6
    text = "\n".join(logs) + (tmp_path / "alerts.jsonl").read_text()
    assert "SECRET-TOKEN" not in text and len(read_jsonl(tmp_path / "alerts.jsonl")) == 6


def test_email_over_starttls_with_login(tmp_path):
    smtp = SmtpServer(tmp_path)
    try:
        al, logs = _alerts(tmp_path, "alerts.email_to=[ops@example.com]", "alerts.smtp_host=127.0.0.1",
                           f"alerts.smtp_port={smtp.port}", env=smtp.env)
        import os
        os.environ["RAYFT_SMTP_CA_FILE"] = smtp.env["RAYFT_SMTP_CA_FILE"]
        try:
            al.alert("accepted", "en: v1 promoted (+3.1 % golden)", line="en")
            al.close()
        finally:
            os.environ.pop("RAYFT_SMTP_CA_FILE", None)
        deadline = time.time() + 10
        while not smtp.messages and time.time() < deadline:
            time.sleep(0.1)
        assert len(smtp.messages) == 1, logs
        assert smtp.tls_seen == [True]
        m = smtp.messages[0]
        assert "Subject: [rayft watch] accepted (en)" in m and "v1 promoted" in m and "ops@example.com" in m
        assert "s3cret-pass" not in "\n".join(logs)
    finally:
        smtp.close()


def test_wrong_smtp_password_is_logged_masked_and_does_not_raise(tmp_path):
    smtp = SmtpServer(tmp_path)
    try:
        env = dict(smtp.env, RAYFT_SMTP_PASSWORD="wrong-password-123")
        import os
        os.environ["RAYFT_SMTP_CA_FILE"] = smtp.env["RAYFT_SMTP_CA_FILE"]
        try:
            al, logs = _alerts(tmp_path, "alerts.email_to=[ops@example.com]",
                               f"alerts.smtp_port={smtp.port}", "alerts.retries=2", env=env)
            al.alert("failed", "x", line="en")
            al.close()
        finally:
            os.environ.pop("RAYFT_SMTP_CA_FILE", None)
        assert not smtp.messages and al.failures == {"email": 1}
        assert any("attempt 2/2" in m for m in logs) and "wrong-password-123" not in "\n".join(logs)
    finally:
        smtp.close()
