"""Deterministic sample pairs in every user format (tests, demo, benchmarks).

The subtitle task is learnable on purpose: the "viral" cut keeps the first words of
each original cue with an exclamation and halves its duration (timings on a 0.5 s
grid), so a fine-tune visibly lowers the loss and its answers can be checked.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

EN_SUBJ = ["the detective", "my sister", "the old captain", "our neighbour", "the new teacher", "a stranger",
           "the young chef", "the lost robot", "her best friend", "the night guard"]
EN_VERB = ["finally opens", "quietly hides", "suddenly finds", "carefully reads", "secretly burns",
           "slowly repairs", "angrily throws", "happily sells", "nervously checks", "bravely climbs"]
EN_OBJ = ["the red letter", "a golden key", "the broken phone", "an old map", "the hidden box",
          "a strange photo", "the last ticket", "the wooden door", "a silver ring", "the empty bottle"]
EN_TAIL = ["before anyone notices", "in the middle of the night", "while the city sleeps",
           "just in time", "without saying a word", "as the rain starts"]
ZH_SUBJ = ["侦探", "我姐姐", "老船长", "邻居", "新老师", "陌生人", "年轻厨师", "迷路的机器人", "她的好朋友", "夜班保安"]
ZH_VERB = ["终于打开了", "悄悄藏起了", "突然发现了", "仔细读了", "偷偷烧掉了", "慢慢修好了", "生气地扔掉了",
           "开心地卖掉了", "紧张地检查了", "勇敢地爬上了"]
ZH_OBJ = ["那封红色的信", "一把金钥匙", "那部坏手机", "一张旧地图", "那个隐藏的盒子", "一张奇怪的照片",
          "最后一张票", "那扇木门", "一枚银戒指", "那个空瓶子"]
ZH_TAIL = ["在没人注意之前", "在半夜里", "在城市沉睡的时候", "刚好来得及", "一句话也没说", "在下雨的时候"]


def _sentence(rng: random.Random, lang: str) -> str:
    if lang == "zh":
        return rng.choice(ZH_SUBJ) + rng.choice(ZH_VERB) + rng.choice(ZH_OBJ) + "，" + rng.choice(ZH_TAIL) + "。"
    s = f"{rng.choice(EN_SUBJ)} {rng.choice(EN_VERB)} {rng.choice(EN_OBJ)} {rng.choice(EN_TAIL)}."
    return s[0].upper() + s[1:]


def viral_text(text: str, lang: str) -> str:
    if lang == "zh":
        core = text.split("，")[0]
        return core[:8] + "！"
    words = text.rstrip(".").split()
    return " ".join(words[:4]) + "!"


def subtitle_pair(rng: random.Random, lang: str) -> dict:
    t, orig, viral = 0.0, [], []
    for _ in range(rng.randint(2, 4)):
        dur = rng.choice([2.0, 3.0, 4.0, 5.0])
        text = _sentence(rng, lang)
        orig.append({"start": t, "end": t + dur, "text": text})
        viral.append({"start": t, "end": t + round(dur / 2 * 2) / 2, "text": viral_text(text, lang)})
        t += dur
    return {"original_subtitles": orig, "viral_subtitles": viral,
            "metadata": {"source": f"drama_series_{rng.randint(1, 20):02d}", "quality": "high", "language": lang}}


def qa_pair(rng: random.Random, lang: str) -> tuple[str, str]:
    s = _sentence(rng, lang)
    if lang == "zh":
        return f"把这句话改写成短视频标题：{s}", viral_text(s, lang)
    return f"Turn this line into a viral hook: {s}", viral_text(s, lang)


def write_samples(out_dir: str | Path, n: int = 200, seed: int = 0) -> dict[str, Path]:
    """One file per format, half English, half Chinese. Returns {format: path}."""
    rng = random.Random(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    langs = ["en", "zh"]
    files = {}
    with open(out / "subtitle_pairs.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps(subtitle_pair(rng, langs[i % 2]), ensure_ascii=False) + "\n")
    files["subtitle"] = out / "subtitle_pairs.jsonl"
    with open(out / "prompt_response.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            p, r = qa_pair(rng, langs[i % 2])
            f.write(json.dumps({"id": f"pr-{i}", "prompt": p, "response": r}, ensure_ascii=False) + "\n")
    files["prompt_response"] = out / "prompt_response.jsonl"
    alp = []
    for i in range(n):
        p, r = qa_pair(rng, langs[i % 2])
        instr, _, inp = p.partition(": ") if ": " in p else p.partition("：")
        alp.append({"instruction": instr, "input": inp, "output": r})
    (out / "alpaca.json").write_text(json.dumps(alp, ensure_ascii=False, indent=1), encoding="utf-8")
    files["alpaca"] = out / "alpaca.json"
    with open(out / "sharegpt.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            p1, r1 = qa_pair(rng, langs[i % 2])
            p2, r2 = qa_pair(rng, langs[i % 2])
            conv = [{"from": "human", "value": p1}, {"from": "gpt", "value": r1},
                    {"from": "human", "value": p2}, {"from": "gpt", "value": r2}]
            f.write(json.dumps({"conversations": conv}, ensure_ascii=False) + "\n")
    files["sharegpt"] = out / "sharegpt.jsonl"
    return files


if __name__ == "__main__":
    import sys
    for k, v in write_samples(sys.argv[1] if len(sys.argv) > 1 else "samples").items():
        print(k, v)
