"""Realistic messy pair sets (en + zh) with planted problems and the truth recorded.

``generate(out, n)`` writes ``out/data/*`` in every input format (prompt_response JSONL
and Parquet, alpaca JSON, sharegpt JSONL, subtitle JSONL) and ``out/truth.jsonl``: one
line per written record with ``file``, ``line`` and ``kind``:

* ``clean``; ``low_value`` ("ok", "好的", emoji-only, prompt copies, ...);
* ``secret`` (+ ``secret``: password, card, cn_id, phone, email, api_key) - must be caught;
* ``decoy`` (+ ``decoy``: non-Luhn 16 digits, order numbers, timestamps, hashes, UUIDs,
  bad-checksum IDs, password prose, ...) - must NOT be flagged;
* ``exact_dup`` / ``near_dup`` (+ ``orig``: [file, line] of the earlier clean record;
  exact copies differ only in whitespace/width/zero-width characters, near copies are
  edited by a few characters or words);
* ``bad`` (malformed JSON, empty reply, broken subtitle timings).

Duplicates always come after their original in (file, line) order.
"""
from __future__ import annotations

import json
import random
import string
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ZH_CHARS = ("的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定"
            "行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些"
            "然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公"
            "无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将"
            "组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金"
            "增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类"
            "八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非"
            "验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效"
            "斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严龙飞")
_CONS, _VOW = "bcdfghjklmnprstvwz", "aeiou"
EN_PROMPTS = ["Explain {s}", "What is the difference between {w} and {w2}?", "Summarize this: {s}",
              "Write a short note about {w} and {w2}.", "How do I {w} the {w2} without {w3}?",
              "Rewrite this line as a punchy hook: {s}", "Give me three tips on {w} {w2}.", "Why does {s}"]
ZH_PROMPTS = ["请解释：{s}", "{w}和{w2}有什么区别？", "总结一下这段话：{s}", "写一段关于{w}的短文。",
              "怎么在不{w3}的情况下{w}{w2}？", "把这句话改写成短视频标题：{s}", "给我三个关于{w}的建议。"]
LOW_VALUE = ["ok", "OK!", "Okay.", "ok ok", "thanks!", "Thank you.", "yes", "Sure.", "lol", "hmm...", "👍", "...",
             "？？", "😂😂", "好的", "好的。", "嗯", "嗯嗯", "哦", "收到！", "谢谢", "哈哈哈", "好吧", "明白了。", "a", "!!!"]
FORMATS = ["prompt_response", "sharegpt", "alpaca", "subtitle", "prompt_response_parquet"]


_ZIPF = [sum(1 / (k + 1) for k in range(i + 1)) for i in range(300)]


class PairGenerator:
    def __init__(self, seed: int):
        self.r = random.Random(seed)
        r = self.r
        self.en_words = list(dict.fromkeys(
            "".join(r.choice(_CONS) + r.choice(_VOW) + (r.choice(_CONS) if r.random() < 0.4 else "")
                    for _ in range(r.choice([1, 2, 2, 3]))) for _ in range(6000)))
        self.zh_words = list(dict.fromkeys("".join(r.choice(ZH_CHARS) for _ in range(r.choice([1, 2, 2, 2, 3])))
                                           for _ in range(6000)))

    def word(self, lang: str) -> str:
        # Zipf-like: a few common words, a long tail
        pool = self.en_words if lang == "en" else self.zh_words
        if self.r.random() < 0.3:
            return pool[self.r.choices(range(300), cum_weights=_ZIPF)[0]]
        return pool[self.r.randrange(len(pool))]

    def sentence(self, lang: str, lo: int = 6, hi: int = 18) -> str:
        ws = [self.word(lang) for _ in range(self.r.randint(lo, hi))]
        if lang == "zh":
            k = len(ws) // 2
            return "".join(ws[:k]) + "，" + "".join(ws[k:]) + self.r.choice("。！？")
        s = " ".join(ws)
        return s[0].upper() + s[1:] + self.r.choice("..!?")

    def text(self, lang: str, lo: int, hi: int) -> str:
        return ("" if lang == "zh" else " ").join(self.sentence(lang) for _ in range(self.r.randint(lo, hi)))

    def pair(self, lang: str) -> dict:
        tpl = self.r.choice(EN_PROMPTS if lang == "en" else ZH_PROMPTS)
        p = tpl.format(s=self.sentence(lang), w=self.word(lang), w2=self.word(lang), w3=self.word(lang))
        system = "" if self.r.random() < 0.85 else ("You are a helpful assistant." if lang == "en" else "你是一个乐于助人的助手。")
        return {"system": system, "prompt": p, "response": self.text(lang, 1, 4), "lang": lang}

    def subtitle(self, lang: str) -> dict:
        t, orig, viral = 0.0, [], []
        for _ in range(self.r.randint(2, 5)):
            dur = self.r.choice([1.5, 2.0, 3.0, 4.0, 5.0])
            s = self.sentence(lang, 4, 12)
            orig.append({"start": t, "end": t + dur, "text": s})
            cut = s[: max(4, len(s) // 3)] + ("！" if lang == "zh" else "!")
            viral.append({"start": t, "end": t + dur / 2, "text": cut})
            t += dur
        return {"original_subtitles": orig, "viral_subtitles": viral,
                "metadata": {"source": f"drama_{self.r.randint(1, 99):02d}", "language": lang}}


# --------------------------------------------------------------------------- secrets / decoys

def luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def card_number(r: random.Random, valid: bool = True) -> str:
    prefix, n = r.choice([("4", 16), ("4", 13), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15),
                          ("6011", 16), ("62", 16), ("62", 19), ("35", 16)])
    body = prefix + "".join(r.choice(string.digits) for _ in range(n - len(prefix) - 1))
    check = luhn_digit(body)
    if not valid:
        check = str((int(check) + r.randint(1, 9)) % 10)
    num = body + check
    style = r.random()
    if style < 0.35 and n == 16:
        return " ".join(num[i:i + 4] for i in range(0, 16, 4))
    if style < 0.6 and n == 16:
        return "-".join(num[i:i + 4] for i in range(0, 16, 4))
    return num


def cn_id(r: random.Random, valid: bool = True) -> str:
    from ..curate.secrets import _ID_CHECK, _ID_WEIGHTS
    area = r.choice(["110101", "310104", "440305", "510107", "330106", "420111", "610113", "210202"])
    birth = f"{r.randint(1950, 2005)}{r.randint(1, 12):02d}{r.randint(1, 28):02d}"
    body = area + birth + f"{r.randint(0, 999):03d}"
    check = _ID_CHECK[sum(int(c) * w for c, w in zip(body, _ID_WEIGHTS)) % 11]
    if not valid:
        check = r.choice([c for c in "0123456789X" if c != check])
    return body + check


def _rand(r: random.Random, chars: str, n: int) -> str:
    return "".join(r.choice(chars) for _ in range(n))


def secret(r: random.Random, kind: str, lang: str) -> str:
    a62 = string.ascii_letters + string.digits
    if kind == "password":
        pw = _rand(r, string.ascii_letters, r.randint(3, 8)) + _rand(r, string.digits, r.randint(2, 4)) + r.choice("!@#$%&*_")
        forms = (["my password: {v}", "Password={v}", "pwd={v}", "the wifi password is {v}", "login with PIN: {d}",
                  "passwd: {v}"] if lang == "en" else ["我的密码是{v}", "密码：{v}", "登录密码为{v}", "口令: {v}", "pwd={v}"])
        return r.choice(forms).format(v=pw, d=_rand(r, string.digits, r.randint(4, 6)))
    if kind == "card":
        c = card_number(r)
        return r.choice(["my card number is {c}", "charge it to {c}", "card: {c}"] if lang == "en"
                        else ["我的卡号是{c}", "银行卡：{c}", "信用卡 {c} 帮我查一下"]).format(c=c)
    if kind == "cn_id":
        return r.choice(["ID number {c}", "my ID is {c}"] if lang == "en" else ["身份证号{c}", "我的身份证是 {c}"]).format(c=cn_id(r))
    if kind == "phone":
        mob = "1" + r.choice("3456789") + _rand(r, string.digits, 9)
        num = r.choice([mob, f"{mob[:3]} {mob[3:7]} {mob[7:]}", f"{mob[:3]}-{mob[3:7]}-{mob[7:]}", f"+86 {mob}",
                        f"+86-{mob[:3]}-{mob[3:7]}-{mob[7:]}",
                        f"+1 {r.randint(201, 989)} {r.randint(200, 999)} {r.randint(1000, 9999)}",
                        f"+44 20 {r.randint(1000, 9999)} {r.randint(1000, 9999)}",
                        f"+81 3-{r.randint(1000, 9999)}-{r.randint(1000, 9999)}",
                        f"({r.randint(201, 989)}) {r.randint(200, 999)}-{r.randint(1000, 9999)}"])
        return r.choice(["call me at {c}", "my number is {c}"] if lang == "en" else ["电话：{c}", "我的手机号是{c}"]).format(c=num)
    if kind == "email":
        e = f"{_rand(r, string.ascii_lowercase, r.randint(3, 8))}{r.choice(['.', '_', ''])}{_rand(r, string.ascii_lowercase, 4)}" \
            f"{r.choice(['', str(r.randint(1, 99))])}@{r.choice(['gmail.com', 'qq.com', '163.com', 'example.org', 'corp.co.uk'])}"
        return r.choice(["email me at {c}", "contact: {c}"] if lang == "en" else ["邮箱：{c}", "发到 {c} 就行"]).format(c=e)
    if kind == "api_key":
        key = r.choice([
            "sk-" + _rand(r, a62, 48), "sk-proj-" + _rand(r, a62 + "_-", 40), "AKIA" + _rand(r, string.ascii_uppercase + string.digits, 16),
            "ghp_" + _rand(r, a62, 36), "xoxb-" + _rand(r, string.digits, 12) + "-" + _rand(r, a62, 24),
            "AIza" + _rand(r, a62 + "_-", 35), "hf_" + _rand(r, a62, 34),
            "eyJ" + _rand(r, a62, 20) + ".eyJ" + _rand(r, a62, 30) + "." + _rand(r, a62 + "_-", 30),
            _rand(r, a62, 24) + "1aA" + _rand(r, a62, 13)])
        return r.choice(["use this key: {c}", "token={c}", "export API_KEY={c}"] if lang == "en"
                        else ["API密钥：{c}", "我的token是 {c}"]).format(c=key)
    raise ValueError(kind)


DECOYS = ("non_luhn", "order", "timestamp", "bad_id", "hash", "uuid", "password_prose", "version_ip", "mention", "price")


def decoy(r: random.Random, kind: str, lang: str) -> str:
    if kind == "non_luhn":
        return ("the test number {c} was declined" if lang == "en" else "这个号码 {c} 无效").format(c=card_number(r, valid=False))
    if kind == "order":
        c = r.choice(["2026" + _rand(r, string.digits, 12), _rand(r, "123456789", 1) + _rand(r, string.digits, 15),
                      "20261122-" + _rand(r, string.digits, 6), "SF" + _rand(r, string.digits, 13)])
        return r.choice(["order number {c} shipped", "Order #{c} is delayed", "tracking no. {c}"] if lang == "en"
                        else ["订单号：{c}", "快递单号 {c} 到了吗", "订单 {c} 还没发货"]).format(c=c)
    if kind == "timestamp":
        t = r.randint(1_600_000_000, 1_800_000_000)
        c = r.choice([str(t), str(t * 1000 + r.randint(0, 999)), f"2026-{r.randint(1, 12):02d}-{r.randint(1, 28):02d} "
                      f"{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:{r.randint(0, 59):02d}",
                      f"2026-11-{r.randint(10, 28)}T{r.randint(10, 23)}:00:00Z"])
        return ("logged at {c}" if lang == "en" else "时间戳 {c}").format(c=c)
    if kind == "bad_id":
        return ("reference {c}" if lang == "en" else "编号{c}").format(c=cn_id(r, valid=False))
    if kind == "hash":
        return ("commit {c}" if lang == "en" else "提交 {c}").format(c=_rand(r, "0123456789abcdef", r.choice([40, 64])))
    if kind == "uuid":
        h = _rand(r, "0123456789abcdef", 32)
        return f"request id {h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    if kind == "password_prose":
        return r.choice(["I forgot my password, how do I reset it?", "the password is required to log in",
                         "password: ********", "忘记密码怎么办？", "密码学是一门很有意思的学科", "密码是什么意思？"])
    if kind == "version_ip":
        return f"v{r.randint(1, 9)}.{r.randint(0, 20)}.{r.randint(0, 9)} on 192.168.{r.randint(0, 255)}.{r.randint(1, 254)}"
    if kind == "mention":
        return r.choice(["thanks @alice_dev for the fix", "use the @property decorator", "ping @张伟 please"])
    if kind == "price":
        return f"it costs ${r.randint(1, 99)},{r.randint(100, 999)}.{r.randint(10, 99)} or ¥{r.randint(1000, 99999)}"
    raise ValueError(kind)


# --------------------------------------------------------------------------- copies

def exact_variant(r: random.Random, text: str) -> str:
    """Same text after normalization: extra/odd whitespace, full-width ASCII, zero-width chars."""
    ops = r.sample(["space", "fullwidth", "zw", "trail"], 2)
    if "space" in ops:
        text = text.replace(" ", "  \t", 1) if " " in text else text + " "
    if "fullwidth" in ops:
        text = "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" and r.random() < 0.3 else c for c in text)
    if "zw" in ops:
        k = r.randrange(len(text) + 1)
        text = text[:k] + "\u200b" + text[k:]
    if "trail" in ops:
        text = "  " + text + " \n"
    return text


def edit(r: random.Random, text: str, lang: str, n_edits: int) -> str:
    """A near copy: n character/word substitutions, insertions or deletions (never identical
    to the original after case/space folding, so a near copy is never an exact duplicate)."""
    out = text
    for _ in range(20):
        out = _edit_once(r, text, lang, n_edits)
        if out.casefold().split() != text.casefold().split():
            break
    return out


def _edit_once(r: random.Random, text: str, lang: str, n_edits: int) -> str:
    for _ in range(n_edits):
        op = r.random()
        if lang == "en":
            ws = text.split(" ")
            k = r.randrange(len(ws))
            if op < 0.4:
                ws[k] = _rand(r, string.ascii_lowercase, r.randint(2, 6))
            elif op < 0.7:
                ws.insert(k, _rand(r, string.ascii_lowercase, r.randint(2, 6)))
            elif len(ws) > 3:
                del ws[k]
            text = " ".join(ws)
        else:
            k = r.randrange(max(len(text), 1))
            if op < 0.5:
                text = text[:k] + r.choice(ZH_CHARS) + text[k + 1:]
            elif op < 0.8:
                text = text[:k] + r.choice(ZH_CHARS) + text[k:]
            elif len(text) > 6:
                text = text[:k] + text[k + 1:]
    return text


# --------------------------------------------------------------------------- writer

def _serialize(item: dict, fmt: str, rid: str) -> dict:
    if fmt == "subtitle":
        return item
    rec: dict
    if fmt.startswith("prompt_response"):
        rec = {"id": rid, "prompt": item["prompt"], "response": item["response"]}
        if item["system"]:
            rec["system"] = item["system"]
        if item.get("meta_lang"):
            rec["metadata"] = {"language": item["lang"]}
    elif fmt == "alpaca":
        rec = {"instruction": item["prompt"], "input": "", "output": item["response"]}
        if item["system"]:
            rec["system"] = item["system"]
    else:
        conv = ([{"from": "system", "value": item["system"]}] if item["system"] else []) + [
            {"from": "human", "value": item["prompt"]}, {"from": "gpt", "value": item["response"]}]
        rec = {"id": rid, "conversations": conv}
    return rec


def generate(out: str | Path, n: int = 100_000, seed: int = 0, n_files: int = 10,
             mix: dict | None = None) -> dict:
    """Write ``n`` records over ``n_files`` files under ``out/data`` and ``out/truth.jsonl``."""
    out = Path(out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    g = PairGenerator(seed)
    r = g.r
    mix = mix or {"clean": 0.66, "low_value": 0.05, "secret": 0.06, "decoy": 0.06, "exact_dup": 0.07,
                  "near_dup": 0.095, "bad": 0.005}
    kinds, weights = list(mix), list(mix.values())
    fmts = [FORMATS[i % len(FORMATS)] for i in range(n_files)]
    sizes = [n // n_files + (1 if i < n % n_files else 0) for i in range(n_files)]
    pools: dict[str, list] = {"text": [], "subtitle": []}  # (item, file, line) of clean originals
    truth, counts = [], {}
    secret_kinds = ("password", "card", "cn_id", "phone", "email", "api_key")
    for fi, (fmt, size) in enumerate(zip(fmts, sizes)):
        ext = {"alpaca": "json", "prompt_response_parquet": "parquet"}.get(fmt, "jsonl")
        name = f"part-{fi:02d}-{fmt.replace('_parquet', '')}.{ext}"
        path = str(out / "data" / name)
        family = "subtitle" if fmt == "subtitle" else "text"
        recs: list = []  # dict records or raw strings (malformed lines)
        for line in range(1, size + 1):
            lang = "en" if r.random() < 0.5 else "zh"
            kind = r.choices(kinds, weights)[0]
            if kind in ("exact_dup", "near_dup") and not pools[family]:
                kind = "clean"
            if family == "subtitle" and kind in ("secret", "decoy", "low_value"):
                kind = "clean"
            t = {"file": path, "line": line, "kind": kind, "lang": lang}
            if kind in ("exact_dup", "near_dup"):
                src, sf, sl = r.choice(pools[family])
                t.update(orig=[sf, sl], lang=src.get("lang") or src["metadata"]["language"])
                lang = t["lang"]
                item = json.loads(json.dumps(src))
                if family == "subtitle":
                    cues = item["original_subtitles"]
                    c = r.randrange(len(cues))
                    cues[c]["text"] = (exact_variant(r, cues[c]["text"]) if kind == "exact_dup"
                                       else edit(r, cues[c]["text"], lang, r.randint(1, 3)))
                elif kind == "exact_dup":
                    item["response"] = exact_variant(r, item["response"])
                else:
                    heavy = r.random() < 0.15
                    field = "response" if r.random() < 0.7 else "prompt"
                    item[field] = edit(r, item[field], lang, r.randint(6, 14) if heavy else r.randint(1, 3))
            elif family == "subtitle":
                item = g.subtitle(lang)
                if kind == "bad":
                    item["viral_subtitles"][-1]["end"] = item["viral_subtitles"][-1]["start"] - 1
            else:
                item = g.pair(lang)
                item["meta_lang"] = r.random() < 0.5
                if kind == "low_value":
                    lv = r.choice(LOW_VALUE + ["<copy>"] * 3)
                    item["response"] = item["prompt"] if lv == "<copy>" else lv
                    t["reply"] = item["response"]
                elif kind in ("secret", "decoy"):
                    sub = r.choice(secret_kinds if kind == "secret" else DECOYS)
                    t[kind] = sub
                    s = secret(r, sub, lang) if kind == "secret" else decoy(r, sub, lang)
                    field = "response" if r.random() < 0.75 else "prompt"
                    sep = " " if lang == "en" else ""
                    item[field] = item[field] + sep + s + ("." if lang == "en" else "。")
                elif kind == "bad":
                    item["response"] = " "
            rid = f"{fi:02d}-{line}"
            if kind == "bad" and family == "text" and fmt != "prompt_response_parquet" and ext == "jsonl" and r.random() < 0.5:
                recs.append('{"prompt": "broken line", "response": ')  # malformed JSON
            else:
                recs.append(_serialize(item, fmt, rid))
            if kind == "clean":
                pools[family].append((item, path, line))
            truth.append(t)
            counts[kind] = counts.get(kind, 0) + 1
        if ext == "jsonl":
            with open(path, "w", encoding="utf-8") as f:
                for rec in recs:
                    f.write((rec if isinstance(rec, str) else json.dumps(rec, ensure_ascii=False)) + "\n")
        elif ext == "json":
            Path(path).write_text(json.dumps(recs, ensure_ascii=False, indent=0), encoding="utf-8")
        else:
            cols = {"id": [x["id"] for x in recs], "prompt": [x["prompt"] for x in recs],
                    "response": [x["response"] for x in recs], "system": [x.get("system", "") for x in recs]}
            pq.write_table(pa.table(cols), path)
    with open(out / "truth.jsonl", "w", encoding="utf-8") as f:
        for t in truth:
            f.write(json.dumps(t, ensure_ascii=False) + "\n")
    return {"data": str(out / "data"), "truth": str(out / "truth.jsonl"), "counts": counts, "rows": len(truth)}
