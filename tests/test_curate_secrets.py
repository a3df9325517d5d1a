"""Secrets/PII detectors: every kind found (incl. next to Chinese text), decoys never."""
from __future__ import annotations

import json
import random

import pytest

from rayft.testing import pairs as synth
from rayft.curate.config import SecretsCfg
from rayft.curate.filters import redact_record, secrets_batch
from rayft.data.reader import WORK_COLUMNS
from rayft.curate.secrets import KINDS, cn_id_ok, find_secrets, luhn_ok, mask

POSITIVE = [
    ("password", "my password: Xy7$kq2!", "Xy7$kq2!"),
    ("password", "Password=hunter22", "hunter22"),
    ("password", "pwd=abc123 thanks", "abc123"),
    ("password", "the wifi password is tiger2024", "tiger2024"),
    ("password", "PIN: 4821", "4821"),
    ("password", "我的密码是abc12345", "abc12345"),
    ("password", "密码：Pa55word!", "Pa55word!"),
    ("password", "登录口令: qwer1234。", "qwer1234"),
    ("card", "card 4111 1111 1111 1111 thanks", "4111 1111 1111 1111"),
    ("card", "charge 5500-0000-0000-0004 now", "5500-0000-0000-0004"),
    ("card", "amex 378282246310005", "378282246310005"),
    ("card", "我的卡号是6222021234567890128。", "6222021234567890128"),
    ("card", "visa 4222222222222", "4222222222222"),
    ("cn_id", "身份证号11010519491231002X", "11010519491231002X"),
    ("cn_id", "my ID is 44030519900101123X ok", "44030519900101123X"),
    ("phone", "call 13812345678 now", "13812345678"),
    ("phone", "我的手机号是15352656300。", "15352656300"),
    ("phone", "电话：+86 138 1234 5678", "+86 138 1234 5678"),
    ("phone", "tel +86-138-1234-5678", "+86-138-1234-5678"),
    ("phone", "US office +1 415 555 2671", "+1 415 555 2671"),
    ("phone", "London +44 20 7946 0958", "+44 20 7946 0958"),
    ("phone", "Tokyo +81 3-1234-5678", "+81 3-1234-5678"),
    ("phone", "我的电话是(415) 555-2671", "(415) 555-2671"),
    ("email", "mail alice.smith@example.com today", "alice.smith@example.com"),
    ("email", "发到zhang_wei99@qq.com就行", "zhang_wei99@qq.com"),
    ("api_key", "key sk-proj-abcdefghijklmnopqrstuvwxyz123456", "sk-proj-abcdefghijklmnopqrstuvwxyz123456"),
    ("api_key", "export AWS_KEY=AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE"),
    ("api_key", "ghp_" + "a1B2c3D4e5" * 4, "ghp_" + "a1B2c3D4e5" * 4),
    ("api_key", "slack xoxb-123456789012-abcdefABCDEF1234", "xoxb-123456789012-abcdefABCDEF1234"),
    ("api_key", "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q", "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q"),
    ("api_key", "hf_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF2", "hf_" + "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF2"),
    ("api_key", "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"),
    ("api_key", "token aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF", "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dF"),
    ("api_key", "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----",
     "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----"),
]

DECOYS = [
    "card 4111-1111-1111-1112 declined",                 # 16 digits, Luhn-invalid
    "test number 5500 0000 0000 0005",                    # Luhn-invalid
    "order 4111111111111111 shipped",                     # Luhn-valid but an order number
    "订单号：6222020200112233445",
    "Order #20261122000123456 is delayed",
    "tracking no. SF1234567890123",
    "logged at 1732262400",                               # unix seconds
    "logged at 1732262400123",                            # unix milliseconds (13 digits)
    "at 2026-11-22 20:41:59 and 2026-11-22T20:41:59Z",
    "reference 11010519491231002Y",                       # ID-like, bad check char
    "编号110105194912310021",                              # ID-like, bad checksum
    "commit 3f786850e387550fdab836ed7e6dc881de23001b",    # sha1
    "request id 550e8400-e29b-41d4-a716-446655440000", "request id decb9128-870a-0041-2345-f9067533a9dd",
    "id 12345678-1381-2345-6789-123456789012", "serial 138 1234 5678 9012 3",
    "v2.14.1 on 192.168.1.20", "it costs $1,234.56 or ¥12345",
    "I forgot my password, how do I reset it?", "the password is required to log in",
    "password: ********", "password: [PASSWORD]", "pwd=<your password>", "忘记密码怎么办？", "密码学是一门很有意思的学科", "密码是什么意思？",
    "use the @property decorator", "thanks @alice_dev", "internationalizationLocalizationConfigurationHandler",
    "call 12345678901", "room 1234 5678", "ISBN 978-3-16-148410-0",
]


@pytest.mark.parametrize("kind,text,value", POSITIVE)
def test_each_kind_is_found(kind, text, value):
    spans = find_secrets(text)
    assert [(s.kind, text[s.start:s.end]) for s in spans] == [(kind, value)]


@pytest.mark.parametrize("text", DECOYS)
def test_decoys_do_not_match(text):
    assert find_secrets(text) == []


def test_validators():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert cn_id_ok("11010519491231002X") and not cn_id_ok("11010519491231002Y")
    assert not cn_id_ok("110105194902301234")  # Feb 30th


def test_generated_secrets_all_found_and_generated_decoys_never():
    r = random.Random(7)
    for kind in KINDS:
        for _ in range(150):
            lang = r.choice(["en", "zh"])
            text = "前文内容，" + synth.secret(r, kind, lang) + "。" if lang == "zh" else "Some text. " + synth.secret(r, kind, lang) + "."
            assert kind in {s.kind for s in find_secrets(text)}, text
    flagged = [t for kind in synth.DECOYS for _ in range(100)
               for t in [synth.decoy(r, kind, r.choice(["en", "zh"]))] if find_secrets(t)]
    assert flagged == []


def test_mask_replaces_only_the_spans():
    text = "call 13812345678 or mail a.b@example.com"
    assert mask(text, find_secrets(text)) == "call [PHONE] or mail [EMAIL]"
    assert mask("pwd=abc123", find_secrets("pwd=abc123"), "<{kind}>") == "pwd=<password>"


def _batch(rows: list[dict]) -> dict:
    b = {c: [] for c in WORK_COLUMNS}
    for r in rows:
        for c in WORK_COLUMNS:
            b[c].append(r.get(c, False if c == "_golden" else ""))
    return b


def test_secrets_batch_drops_masks_and_never_leaks_values():
    hist = json.dumps([{"role": "user", "content": "my mail is x.y@example.com"},
                       {"role": "assistant", "content": "noted"}])
    b = _batch([
        {"prompt": "hi", "response": "my card is 4111 1111 1111 1111"},
        {"prompt": "call me at 13812345678", "response": "sure, will do"},
        {"prompt": "q", "response": "fine answer", "history": hist},
        {"prompt": "q", "response": "nothing secret here"},
        {"prompt": "q", "response": "pwd=abc123", "_filter": "low_value", "_reason": "earlier filter"},
    ])
    out = secrets_batch(b, SecretsCfg())
    assert out["_filter"] == ["secrets", "", "", "", "low_value"]
    assert out["_reason"][0] == "secrets: card in response" and "4111" not in out["_reason"][0]
    assert out["prompt"][1] == "call me at [PHONE]" and out["_masked"][1] == "phone"
    assert json.loads(out["history"][2])[0]["content"] == "my mail is [EMAIL]" and out["_masked"][2] == "email"
    assert out["response"][3] == "nothing secret here" and out["_masked"][3] == ""
    assert b["prompt"][1] == "call me at 13812345678"  # pure: the input batch is unchanged
    # actions are configurable per kind
    cfg = SecretsCfg(card="mask", phone="drop")
    out = secrets_batch(b, cfg)
    assert out["response"][0] == "my card is [CARD]" and out["_filter"][1] == "secrets"
    assert secrets_batch(b, SecretsCfg(enabled=False)) is b


def test_redact_record_masks_nested_strings():
    rec = {"conversations": [{"from": "human", "value": "密码：abc12345"}], "n": 3}
    assert redact_record(rec, SecretsCfg()) == {"conversations": [{"from": "human", "value": "密码：[PASSWORD]"}], "n": 3}
