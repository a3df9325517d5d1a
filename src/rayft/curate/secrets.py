"""Secret and PII detectors: passwords, payment cards, Chinese resident IDs, phones, e-mails, API keys.

Pure Python (no Ray). Every detector returns ``Span(kind, start, end)`` over a string;
regexes find candidates and validators (Luhn, issuer prefix, ID checksum and birth date,
entropy) reject look-alikes such as order numbers, timestamps and non-Luhn digit runs.
Detectors expect NFKC text (full-width digits already folded), which the normalize
filter provides.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from datetime import date
from typing import NamedTuple

KINDS = ("password", "card", "cn_id", "phone", "email", "api_key")


class Span(NamedTuple):
    kind: str
    start: int
    end: int


# --------------------------------------------------------------------------- password
# A keyword, a separator, then the value (the part that is masked). Values are printable
# ASCII without quotes/commas, >= 4 characters. Prose separators ("password is", "密码是")
# also need a digit or symbol in the value, so "the password is required" or "密码是什么"
# are not hits while "my password is hunter2" and "密码是abc12345" are.
_PW_VALUE = r"(?P<v>[A-Za-z0-9!@#$%^&*()_+\-=\[\]{}|\\<>?./~`:]{4,})"
_PW = re.compile(r"(?i)(?:(?<![a-z])(?:password|passwd|passcode|pwd|pass|pin)(?![a-z])|密码|口令|密碼)\s*"
                 r"(?P<sep>[:=：]|(?<![a-z])(?:is|was)(?![a-z])|是|为|為)\s*" + _PW_VALUE)
_PROSE_SEP = {"is", "was", "是", "为", "為"}


def _passwords(text: str) -> list[Span]:
    out = []
    for m in _PW.finditer(text):
        v = m.group("v").rstrip(".:")
        if len(v) < 4 or set(v) <= set("*xX.-_"):  # "password: ****" is already redacted
            continue
        if v[0] in "[<{(" and not any(c.isdigit() for c in v):  # "[PASSWORD]", "<your password>": templates
            continue
        if m.group("sep").lower() in _PROSE_SEP and not any(not c.isalpha() for c in v):
            continue
        out.append(Span("password", m.start("v"), m.start("v") + len(v)))
    return out


# --------------------------------------------------------------------------- cards
_CARD = re.compile(r"(?<![0-9A-Za-z_-])(?:\d[ -]?){12,18}\d(?![0-9A-Za-z_]|-\d)")
# Issuer (IIN) prefixes and lengths of the networks we care about.
_CARD_PREFIXES = (
    (("4",), (13, 16, 19)),                                              # Visa
    (tuple(str(p) for p in range(51, 56)) + tuple(str(p) for p in range(2221, 2721)), (16,)),  # Mastercard
    (("34", "37"), (15,)),                                               # Amex
    (("6011", "65") + tuple(str(p) for p in range(644, 650)), (16, 19)),   # Discover
    (("62",), (16, 17, 18, 19)),                                          # UnionPay
    (("35",), (16, 19)),                                                  # JCB
    (("36", "38", "39") + tuple(str(p) for p in range(300, 306)), (14, 16)),  # Diners
)
# A number right after these words is an order/tracking/reference number, not a card.
_NOT_CARD_CONTEXT = re.compile(
    r"(?i)(order|invoice|tracking|track|ref|reference|ticket|transaction|txn|timestamp|isbn|serial|no\.|"
    r"订单|单号|快递|运单|流水|编号|发票|时间戳)\W{0,3}[#:：]?\s*$")


def luhn_ok(digits: str) -> bool:
    total, alt = 0, False
    for ch in reversed(digits):
        d = ord(ch) - 48
        if alt:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        alt = not alt
    return total % 10 == 0


def card_issuer_ok(digits: str) -> bool:
    n = len(digits)
    return any(n in lengths and digits.startswith(prefixes) for prefixes, lengths in _CARD_PREFIXES)


def _cards(text: str) -> list[Span]:
    out = []
    for m in _CARD.finditer(text):
        raw = m.group()
        digits = raw.replace(" ", "").replace("-", "")
        if not (13 <= len(digits) <= 19 and card_issuer_ok(digits) and luhn_ok(digits)):
            continue
        if _NOT_CARD_CONTEXT.search(text[max(0, m.start() - 24):m.start()]):
            continue
        out.append(Span("card", m.start(), m.end()))
    return out


# --------------------------------------------------------------------------- Chinese ID
_CN_ID = re.compile(r"(?<![\dA-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx]"
                    r"(?![\dA-Za-z])")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def cn_id_ok(s: str) -> bool:
    """ISO 7064 MOD 11-2 checksum and a real birth date."""
    if len(s) != 18:
        return False
    try:
        date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return False
    total = sum(int(c) * w for c, w in zip(s[:17], _ID_WEIGHTS))
    return _ID_CHECK[total % 11] == s[17].upper()


def _cn_ids(text: str) -> list[Span]:
    return [Span("cn_id", m.start(), m.end()) for m in _CN_ID.finditer(text) if cn_id_ok(m.group())]


# --------------------------------------------------------------------------- phones
_CN_MOBILE = re.compile(r"(?<![0-9A-Za-z_+])(?<![0-9A-Za-z][.-])(?<![0-9] )(?:(?:\+|00)86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}"
                        r"(?![0-9A-Za-z_]|[ .-][0-9])")
# International: '+' or '00' country code, then 6-14 more digits in groups. A phone is never
# a group inside a longer grouped digit/hex run ('6011 9647 0059 5066', UUIDs).
_INTL = re.compile(r"(?<![0-9A-Za-z_])(?<![0-9A-Za-z][.-])(?<![0-9] )(?:\+|00)[1-9]\d{0,2}(?:[ .-]?\(?\d{1,5}\)?){2,6}"
                   r"(?![0-9A-Za-z_]|[.-][0-9A-Za-z]| [0-9])")
# North American style with separators: (415) 555-2671, 415-555-2671, 415.555.2671.
_NANP = re.compile(r"(?<![0-9A-Za-z_])(?<![0-9A-Za-z][.-])(?<![0-9] )(?:\(\d{3}\)\s?|\d{3}[-.])\d{3}[-.]\d{4}(?![0-9A-Za-z_]|[-.]\d)")


def _phones(text: str) -> list[Span]:
    out = [Span("phone", m.start(), m.end()) for m in _CN_MOBILE.finditer(text)]
    for rx in (_INTL, _NANP):
        for m in rx.finditer(text):
            n = sum(c.isdigit() for c in m.group())
            if 8 <= n <= 15:
                out.append(Span("phone", m.start(), m.end()))
    return out


# --------------------------------------------------------------------------- e-mail
_EMAIL = re.compile(r"(?<![0-9A-Za-z_.+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?![0-9A-Za-z_-])")


def _emails(text: str) -> list[Span]:
    return [Span("email", m.start(), m.end()) for m in _EMAIL.finditer(text)]


# --------------------------------------------------------------------------- API keys
_KEY_PREFIXED = re.compile(
    r"(?<![0-9A-Za-z_-])(?:"
    r"sk-(?:proj-|ant-(?:api\d\d-)?|live-|svcacct-)?[A-Za-z0-9_-]{20,}"   # OpenAI / Anthropic style
    r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}"                         # Stripe
    r"|(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}"                           # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,}"            # GitHub
    r"|glpat-[A-Za-z0-9_-]{20,}"                                            # GitLab
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"                                       # Slack
    r"|AIza[0-9A-Za-z_-]{35}"                                               # Google
    r"|hf_[A-Za-z0-9]{30,}"                                                 # Hugging Face
    r")(?![0-9A-Za-z_-])")
_JWT = re.compile(r"(?<![0-9A-Za-z_-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")
_PRIVATE_KEY = re.compile(r"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----[^\x00]*?"
                          r"(?:-----END (?:[A-Z]+ )?PRIVATE KEY-----|(?=\n\x00)|$)")
# Every key above except JWT/PEM is part of one run of token characters: scan runs once,
# then look for a known prefix inside the (rare) long runs.
_TOKEN = re.compile(r"(?<![0-9A-Za-z_+/=-])[A-Za-z0-9+/=_-]{20,}(?![0-9A-Za-z_+/=-])")
_HEXISH = re.compile(r"[0-9a-fA-F-]+")


def shannon_bits(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def _api_keys(text: str, min_len: int = 32, min_bits: float = 4.0) -> list[Span]:
    out = []
    if "eyJ" in text:
        out += [Span("api_key", m.start(), m.end()) for m in _JWT.finditer(text)]
    if "-----BEGIN" in text:
        out += [Span("api_key", m.start(), m.end()) for m in _PRIVATE_KEY.finditer(text)]
    for m in _TOKEN.finditer(text):
        tok = m.group()
        known = [Span("api_key", m.start() + k.start(), m.start() + k.end()) for k in _KEY_PREFIXED.finditer(tok)]
        if known:
            out += known
            continue
        if len(tok) < min_len or _HEXISH.fullmatch(tok):  # hashes and UUIDs are not secrets
            continue
        if not (any(c.isdigit() for c in tok) and any(c.isupper() for c in tok) and any(c.islower() for c in tok)):
            continue
        if shannon_bits(tok) >= min_bits:
            out.append(Span("api_key", m.start(), m.end()))
    return out


# --------------------------------------------------------------------------- all kinds
_DIGIT_RUN = re.compile(r"\d(?:[ .()+-]{0,2}\d){6}")
_NON_DIGIT_BYTES = bytes(i for i in range(256) if not 48 <= i <= 57)


def _pw_hint(text: str) -> bool:
    low = text.lower()
    return "pass" in low or "pwd" in low or "pin" in low or "密" in text or "口令" in text


def find_secrets(text: str, kinds: tuple[str, ...] = KINDS, min_len: int = 32,
                 min_bits: float = 4.0) -> list[Span]:
    """All spans of the requested kinds, sorted, overlaps resolved (earlier/longer wins)."""
    spans: list[Span] = []
    # Cheap gates first: most text has fewer than 7 digits, no '@' and no password keyword.
    digits = (len(text.encode("utf-8", "replace").translate(None, _NON_DIGIT_BYTES)) >= 7
              and _DIGIT_RUN.search(text) is not None)  # every digit kind has 7+ digits, <= 2 separators apart
    if "password" in kinds and _pw_hint(text):
        spans += _passwords(text)
    if digits:
        if "card" in kinds:
            spans += _cards(text)
        if "cn_id" in kinds:
            spans += _cn_ids(text)
        if "phone" in kinds:
            spans += _phones(text)
    if "email" in kinds and "@" in text:
        spans += _emails(text)
    if "api_key" in kinds:
        spans += _api_keys(text, min_len, min_bits)
    return _resolve(spans)


_PRIORITY = {k: i for i, k in enumerate(("api_key", "password", "cn_id", "card", "email", "phone"))}


def _resolve(spans: list[Span]) -> list[Span]:
    """Drop spans overlapping a stronger one (api_key > password > cn_id > card > email > phone)."""
    spans = sorted(spans, key=lambda s: (_PRIORITY[s.kind], s.start, -(s.end - s.start)))
    kept: list[Span] = []
    for s in spans:
        if all(s.end <= k.start or s.start >= k.end for k in kept):
            kept.append(s)
    return sorted(kept, key=lambda s: s.start)


def mask(text: str, spans: list[Span], fmt: str = "[{KIND}]") -> str:
    """Replace each span by ``fmt`` ({KIND}/{kind} filled in)."""
    out, pos = [], 0
    for s in sorted(spans, key=lambda s: s.start):
        out.append(text[pos:s.start])
        out.append(fmt.replace("{KIND}", s.kind.upper()).replace("{kind}", s.kind))
        pos = s.end
    out.append(text[pos:])
    return "".join(out)
