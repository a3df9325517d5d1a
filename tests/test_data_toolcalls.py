"""Pure tests (no Ray): tool-calling conversations in the sharegpt and OpenAI layouts,
content parts, multi-turn loss and Hugging Face ``save_to_disk`` folders read into the one
schema; rows read = kept + rejected with a reason per reject; loss masks cover exactly the
assistant tokens (tool-call turns included, tool results never)."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from rayft.data.formats import parse_messages, read_file, read_pairs
from rayft.data.records import PAIR_COLUMNS, rows_to_table
from rayft.data.tokenize import IGNORE, encode_pair, encode_row, fallback_messages, row_messages
from rayft.models.load import load_tokenizer

WEATHER = {"name": "get_weather", "description": "current weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TIME = {"name": "get_time", "description": "local time", "parameters": {"type": "object", "properties": {}}}


def _jsonl(path, recs):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in recs),
                    encoding="utf-8")
    return path


def sharegpt_rows() -> list:
    call = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})
    good = {"conversations": [{"from": "human", "value": "Weather in Paris?"},
                              {"from": "function_call", "value": call},
                              {"from": "observation", "value": '{"temp_c": 21}'},
                              {"from": "gpt", "value": "It is 21 degrees in Paris."}],
            "system": "", "tools": json.dumps([WEATHER, TIME])}
    two_calls = {"conversations": [{"from": "human", "value": "天气和时间？"},
                                   {"from": "function_call", "value": json.dumps(
                                       [{"name": "get_weather", "arguments": {"city": "北京"}},
                                        {"name": "get_time", "arguments": {}}])},
                                   {"from": "observation", "value": '{"temp_c": 3}'},
                                   {"from": "observation", "value": '"08:00"'},
                                   {"from": "gpt", "value": "北京3度，现在八点。"}],
                 "tools": [WEATHER, TIME]}  # a list, not a JSON string
    plain = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    return [
        good,                                                                       # 1 kept
        two_calls,                                                                  # 2 kept
        plain,                                                                      # 3 kept (a classic pair)
        dict(good, conversations=[good["conversations"][0],
                                  {"from": "function_call", "value": '{"name": "get_weather", "arguments": {'},
                                  *good["conversations"][2:]]),                     # 4 broken call JSON
        dict(good, tools='[{"name": "get_weather", '),                             # 5 broken tools JSON
        dict(good, conversations=[{"from": "robot", "value": "beep"}, *good["conversations"]]),  # 6 unknown role
        dict(good, conversations=[good["conversations"][0], {"from": "gpt", "value": "  "}]),   # 7 empty turn
        dict(good, conversations=[good["conversations"][0], good["conversations"][2],
                                  good["conversations"][3]]),                       # 8 result without a call
        dict(good, tools=json.dumps([{"description": "no name"}])),                 # 9 tool without a name
        dict(good, conversations=[good["conversations"][0],
                                  {"from": "function_call", "value": '{"arguments": {}}'},
                                  *good["conversations"][2:]]),                     # 10 call without a name
        "{not json",                                                                # 11 malformed line
    ]


def openai_rows() -> list:
    tools = [{"type": "function", "function": WEATHER}]
    good = {"messages": [
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "value": "Oslo?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": -2}'},
        {"role": "assistant", "content": [{"type": "text", "text": "It is -2 degrees in Oslo."}]}], "tools": tools}
    msgs = good["messages"]
    multi = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
                          {"role": "user", "content": "and 3+3?"}, {"role": "assistant", "content": "6"}]}
    bad_args = json.loads(json.dumps(good))
    bad_args["messages"][2]["tool_calls"][0]["function"]["arguments"] = '{"city": Oslo}'
    bad_id = json.loads(json.dumps(good))
    bad_id["messages"][3]["tool_call_id"] = "call_9"
    image = json.loads(json.dumps(good))
    image["messages"][1]["content"].append({"type": "image_url", "image_url": {"url": "http://x/cat.png"}})
    audio = json.loads(json.dumps(good))
    audio["messages"][1]["content"] = [{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]
    return [
        good,                                                                       # 1 kept
        multi,                                                                      # 2 kept (multi-turn, no tools)
        bad_args,                                                                   # 3 arguments not JSON
        bad_id,                                                                     # 4 tool_call_id unknown
        image,                                                                      # 5 image part
        audio,                                                                      # 6 audio part
        {"messages": [*msgs[:1], {"role": "user", "content": ""}, msgs[4]]},        # 7 empty user turn
        {"messages": [msgs[1], {"role": "critic", "content": "meh"}, msgs[4]]},     # 8 unknown role
        {"messages": [msgs[1], {"role": "user", "content": "hello?"}]},             # 9 no assistant turn
        dict(good, tools="not json"),                                               # 10 tools not JSON
        {"messages": msgs[:4], "tools": tools},                                     # 11 kept: learns the call
    ]


def test_sharegpt_tool_layout(tmp_path):
    path = _jsonl(tmp_path / "tools.jsonl", sharegpt_rows())
    res = read_file(str(path))
    assert res.files[str(path)]["format"] == "sharegpt"
    assert res.rows_read == 11 == len(res.rows) + len(res.rejects)
    assert [r["line"] for r in res.rows] == [1, 2, 3]
    reasons = {r["line"]: r["reason"] for r in res.rejects}
    assert "function_call is not valid JSON" in reasons[4]
    assert "field 'tools' is not valid JSON" in reasons[5]
    assert "unknown role 'robot'" in reasons[6]
    assert "empty" in reasons[7]
    assert "tool result without a preceding tool call" in reasons[8]
    assert "tool schema without a 'name'" in reasons[9]
    assert "tool call without a 'name'" in reasons[10]
    assert "malformed JSON" in reasons[11]

    row = res.rows[0]
    assert set(PAIR_COLUMNS) <= set(row)
    msgs = json.loads(row["messages"])
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant"]
    assert msgs[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert [t["function"]["name"] for t in json.loads(row["tools"])] == ["get_weather", "get_time"]
    # the pair view: what curate's filters and eval read
    assert row["prompt"] == "Weather in Paris?" and row["response"] == "It is 21 degrees in Paris."
    two = res.rows[1]
    assert len(json.loads(two["messages"])[1]["tool_calls"]) == 2 and two["language"] == "zh"
    plain = res.rows[2]  # no tools anywhere: exactly the classic pair, nothing extra
    assert (plain["prompt"], plain["response"], plain["messages"], plain["tools"]) == ("hi", "hello", "", "")


def test_openai_layout_and_content_parts(tmp_path):
    path = _jsonl(tmp_path / "chat.jsonl", openai_rows())
    res = read_pairs(str(path))
    assert res.files[str(path)]["format"] == "openai"
    assert res.rows_read == 11 == len(res.rows) + len(res.rejects)
    assert [r["line"] for r in res.rows] == [1, 2, 11]
    reasons = {r["line"]: r["reason"] for r in res.rejects}
    assert "arguments is not valid JSON" in reasons[3]
    assert "tool_call_id 'call_9' matches no earlier tool call" in reasons[4]
    assert "'image_url' content parts are not supported" in reasons[5]
    assert "'input_audio' content parts are not supported" in reasons[6]
    assert "messages[1]: empty" in reasons[7]
    assert "unknown role 'critic'" in reasons[8]
    assert "no user turn followed by an assistant turn" in reasons[9]
    assert "field 'tools' is not valid JSON" in reasons[10]
    row = res.rows[0]
    assert row["system"] == "You are a weather bot." and row["prompt"] == "Weather in Oslo?"
    msgs = json.loads(row["messages"])
    assert msgs[1]["tool_calls"][0] == {"type": "function", "id": "call_1",
                                        "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    assert msgs[2] == {"role": "tool", "content": '{"temp_c": -2}', "tool_call_id": "call_1"}
    multi = res.rows[1]
    assert multi["messages"] == "" and multi["prompt"] == "and 3+3?" and json.loads(multi["history"])[1]["content"] == "4"
    # ends on a tool result: the result is dropped, the row teaches the call
    call_only = res.rows[2]
    assert call_only["response"] == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    assert [m["role"] for m in json.loads(call_only["messages"])] == ["user", "assistant"]


def test_content_part_spellings():
    msgs = parse_messages([{"role": "user", "content": ["a", {"type": "text", "value": "b"}, {"text": "c"},
                                                        {"type": "input_text", "text": "d"}]},
                           {"role": "assistant", "content": [{"type": "output_text", "text": "ok"}]}], "messages")
    assert msgs[0]["content"] == "abcd" and msgs[1]["content"] == "ok"


def test_canonical_rows_round_trip_through_parquet(tmp_path):
    """Curated Parquet (PAIRS_SCHEMA) reads back with its history, messages and tools."""
    res = read_file(str(_jsonl(tmp_path / "t.jsonl", sharegpt_rows()[:3] + openai_rows()[:2])))
    pq.write_table(rows_to_table(res.rows), tmp_path / "curated.parquet")
    back = read_pairs(str(tmp_path / "curated.parquet"))
    assert not back.rejects and len(back.rows) == 5
    for a, b in zip(res.rows, back.rows):
        for k in ("system", "history", "prompt", "response", "messages", "tools", "language"):
            assert a[k] == b[k], k


# --------------------------------------------------------------------------- masks

TOOL_TEMPLATE = (  # a Qwen2.5-style template that takes tools (for the native path)
    "{% if tools %}{{ '<|im_start|>system\\n' }}{% if messages[0]['role'] == 'system' %}"
    "{{ messages[0]['content'] + '\\n' }}{% endif %}{{ '# Tools\\n<tools>' }}"
    "{% for t in tools %}{{ '\\n' + (t | tojson) }}{% endfor %}{{ '\\n</tools><|im_end|>\\n' }}"
    "{% elif messages[0]['role'] == 'system' %}{{ '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}"
    "{% elif m['role'] == 'tool' %}"
    "{{ '<|im_start|>user\\n<tool_response>\\n' + m['content'] + '\\n</tool_response><|im_end|>\\n' }}"
    "{% elif m['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' + (m['content'] or '') }}"
    "{% for c in m['tool_calls'] or [] %}{{ ('\\n' if (m['content'] or not loop.first) else '') + '<tool_call>\\n' }}"
    "{{ '{\"name\": \"' + c['function']['name'] + '\", \"arguments\": ' + (c['function']['arguments'] | tojson) }}"
    "{{ '}\\n</tool_call>' }}{% endfor %}{{ '<|im_end|>\\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny-qwen2")


@pytest.fixture(scope="module")
def tool_tok(tmp_path_factory):
    t = load_tokenizer("tiny-qwen2")
    d = tmp_path_factory.mktemp("tooltok")
    t.chat_template = TOOL_TEMPLATE
    t.save_pretrained(d)
    return load_tokenizer(str(d))


def _runs(ids, labels):
    """Maximal runs of labelled tokens -> decoded texts."""
    runs, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE:
            assert lab == i
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return runs


def _check_masks(tk, row, train_on, expected_turns):
    ids, labels, trunc = encode_row(tk, row["system"], row["history"], row["prompt"], row["response"], 2048,
                                    row["messages"], row["tools"], train_on)
    assert not trunc and len(ids) == len(labels)
    runs = [tk.decode(r) for r in _runs(ids, labels)]
    assert runs == [t + "<|im_end|>\n" for t in expected_turns]
    # every labelled token is in an assistant turn: the rest of the text (system, tools,
    # user turns, tool results) is all IGNORE
    unlabelled = tk.decode([i for i, lab in zip(ids, labels) if lab == IGNORE])
    for r in runs:
        assert r.strip("\n").replace("<|im_end|>", "") not in unlabelled or not r.strip()
    return ids, labels


@pytest.mark.parametrize("native", [False, True], ids=["fallback-template", "template-with-tools"])
def test_tool_masks_cover_exactly_the_assistant_turns(tmp_path, tok, tool_tok, native):
    tk = tool_tok if native else tok
    res = read_file(str(_jsonl(tmp_path / "t.jsonl", sharegpt_rows()[:2] + openai_rows()[:1])))
    paris, beijing, oslo = res.rows
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    ids, _ = _check_masks(tk, paris, "last", [call, "It is 21 degrees in Paris."])
    text = tk.decode(ids)
    assert '{"temp_c": 21}' in text and "<tool_response>" in text  # the result is in the input ...
    assert '"get_time"' in text  # ... and so are the tool schemas
    calls = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "北京"}}\n</tool_call>\n'
             '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')
    _check_masks(tk, beijing, "all_assistant", [calls, "北京3度，现在八点。"])
    oslo_call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    ids, labels = _check_masks(tk, oslo, "last", [oslo_call, "It is -2 degrees in Oslo."])
    learned = tk.decode([i for i, lab in zip(ids, labels) if lab != IGNORE])
    assert "-2}" not in learned and "weather bot" not in learned and "Weather in Oslo" not in learned
    if native:  # rendered by the template with the tools, not the fallback header
        assert "# Tools" in text and "You can call these tools" not in text
    else:
        assert "You can call these tools" in text


def test_multi_turn_loss_option(tmp_path, tok):
    rec = {"conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "2+2?"},
                             {"from": "gpt", "value": "4"}, {"from": "human", "value": "3+3?"},
                             {"from": "gpt", "value": "6"}, {"from": "human", "value": "thanks"},
                             {"from": "gpt", "value": "any time"}]}
    row = read_file(str(_jsonl(tmp_path / "m.jsonl", [rec]))).rows[0]
    args = (row["system"], row["history"], row["prompt"], row["response"])
    # default: exactly what rayft always did (loss on the last response only)
    assert encode_row(tok, *args, 512) == encode_pair(tok, *args, 512)
    _check_masks(tok, row, "all_assistant", ["4", "6", "any time"])
    ids, labels, _ = encode_row(tok, *args, 512, train_on="all_assistant")
    assert ids[-2:] == [tok.eos_token_id, tok("\n", add_special_tokens=False)["input_ids"][0]]
    with pytest.raises(ValueError, match="train_on"):
        encode_row(tok, *args, 512, train_on="everything")


def test_truncation_keeps_the_final_reply(tmp_path, tok):
    rec = sharegpt_rows()[0]
    rec = dict(rec, conversations=[{"from": "human", "value": "long context " * 200}, *rec["conversations"][1:]])
    row = read_file(str(_jsonl(tmp_path / "t.jsonl", [rec]))).rows[0]
    ids, labels, trunc = encode_row(tok, row["system"], row["history"], row["prompt"], row["response"], 64,
                                    row["messages"], row["tools"])
    assert trunc and len(ids) == 64 == len(labels)
    assert "get_weather" in tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE])


def test_fallback_messages_document_the_rendering():
    msgs, tools = row_messages("sys", "", "", "", json.dumps(
        [{"role": "user", "content": "q"},
         {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
                                                               "function": {"name": "f", "arguments": {"x": 1}}}]},
         {"role": "tool", "content": "r1"}, {"role": "tool", "content": "r2"},
         {"role": "assistant", "content": "done"}]), json.dumps([{"type": "function", "function": {"name": "f"}}]))
    fb = fallback_messages(msgs, tools)
    assert [m["role"] for m in fb] == ["system", "user", "assistant", "user", "assistant"]
    assert fb[0]["content"].startswith("sys\n\nYou can call these tools") and '{"name": "f"}' in fb[0]["content"]
    assert fb[2]["content"] == '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>'
    assert fb[3]["content"] == "<tool_response>\nr1\n</tool_response>\n<tool_response>\nr2\n</tool_response>"


# --------------------------------------------------------------------------- HF datasets folders

def test_save_to_disk_folders(tmp_path):
    datasets = pytest.importorskip("datasets")  # dev extra; the reader itself needs only pyarrow
    rows = [r for r in sharegpt_rows() if isinstance(r, dict)]
    recs = [rows[0], *rows[3:7], rows[1], rows[2], *rows[7:]]  # valid rows in both shards
    # Arrow needs one type per column: tools as JSON strings (LLaMA-Factory's layout)
    recs = [dict(r, tools=r["tools"] if isinstance(r.get("tools"), str) else json.dumps(r.get("tools", [])),
                 system=r.get("system", "")) for r in recs]
    ds = datasets.Dataset.from_list(recs)
    ds.save_to_disk(str(tmp_path / "ds"), num_shards=2)
    res = read_pairs(str(tmp_path / "ds"))
    assert sorted(res.files) == sorted(str(p) for p in (tmp_path / "ds").glob("*.arrow")) and len(res.files) == 2
    assert all(f["format"] == "sharegpt" for f in res.files.values())
    assert res.rows_read == len(recs) == len(res.rows) + len(res.rejects)
    assert len(res.rows) == 3 and {r["prompt"] for r in res.rows} == {"Weather in Paris?", "天气和时间？", "hi"}
    assert any("function_call is not valid JSON" in r["reason"] for r in res.rejects)

    good = openai_rows()[0]  # Arrow columns need one type: plain string contents here
    msgs = [dict(m, content=m["content"] if not isinstance(m["content"], list) else
                 "".join(p.get("text") or p.get("value") for p in m["content"])) for m in good["messages"]]
    chat = [dict(good, messages=msgs), {"messages": msgs[1:2] + msgs[4:], "tools": []}]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(chat * 3),
                               "test": datasets.Dataset.from_list(chat[:1])})
    dd.save_to_disk(str(tmp_path / "dd"))
    res = read_pairs(str(tmp_path / "dd"))  # a DatasetDict reads its train split
    assert len(res.rows) == 6 and not res.rejects and all("/train/" in f for f in res.files)
    assert read_pairs(str(tmp_path / "dd" / "test")).rows[0]["prompt"] == "Weather in Oslo?"
    # a glob over folders (runs/curated/*/train style) and a folder holding the dataset
    assert len(read_pairs(str(tmp_path / "d*")).rows) == 3 + 6
    # a dataset's Arrow file named directly
    arrow = sorted((tmp_path / "dd" / "train").glob("*.arrow"))[0]
    assert len(read_pairs(str(arrow)).rows) == 6


def test_curate_filters_cover_tool_conversations(tmp_path):
    """curate's normalize and secrets filters reach the texts training renders from
    ``messages`` (tool results and tool-call arguments), not only the pair view."""
    from rayft.curate.config import NormalizeCfg, SecretsCfg
    from rayft.curate.filters import normalize_batch, secrets_batch
    from rayft.data.reader import plan_file, read_task

    rec = sharegpt_rows()[0]
    conv = rec["conversations"]
    rec = dict(rec, conversations=[conv[0], {"from": "function_call", "value": json.dumps(
        {"name": "get_weather", "arguments": {"city": "Paris", "notify": "bob@example.com"}})},
        {"from": "observation", "value": "sent  to   alice@example.org"}, conv[3]])
    path = _jsonl(tmp_path / "t.jsonl", [rec])
    b = read_task(plan_file(str(path))[0])
    assert not b["_filter"][0]
    b = secrets_batch(normalize_batch(b, NormalizeCfg()), SecretsCfg())
    msgs = json.loads(b["messages"][0])
    assert msgs[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris", "notify": "[EMAIL]"}
    assert msgs[2]["content"] == "sent to [EMAIL]"  # normalized and masked
    assert b["_masked"][0] == "email" and "example" not in b["messages"][0]
