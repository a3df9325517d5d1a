"""Build the small bilingual (en/zh) byte-level BPE tokenizer shipped for tiny test models.

Byte-level BPE encodes any Unicode text losslessly, so Chinese, emoji and rare scripts
round-trip; the merges learned from the bilingual corpus below just make common
English words and Chinese characters short. Rebuild with
``python -m rayft.models.tiny_tokenizer src/rayft/assets/tiny_tokenizer``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

_EN = """The quick brown fox jumps over the lazy dog. What is the capital of France? The capital
of France is Paris. Rewrite these subtitles into a punchy viral cut and keep the timings.
I can't believe you did that! Wait, what happened next? She opened the door and the room was
empty. Tell me about your day. I went to the market, bought some vegetables and cooked dinner.
Please summarize the following text in one sentence. Translate this sentence into Chinese.
You are a helpful assistant. Answer the question briefly and accurately. Thank you very much.
The model is trained with low rank adaptation on a small dataset of prompt and response pairs.
Hello, how are you today? I am fine, thanks. Where are you going? Let's go home now. Never
give up. This changes everything. You won't believe what happens next. The secret is out.
one two three four five six seven eight nine ten hundred thousand million first second last
"""
_ZH = """你好，今天过得怎么样？我很好，谢谢。请把这些字幕改写成更有冲击力的短视频版本，并保留时间轴。
法国的首都是巴黎。中国的首都是北京。你是一个乐于助人的助手，请简洁准确地回答问题。
她打开门，房间里空无一人。我不敢相信你竟然这么做了！等等，接下来发生了什么？
我去了市场，买了一些蔬菜，然后做了晚饭。请用一句话总结下面的内容。把这句话翻译成英文。
模型使用低秩适配在一个小的问答数据集上进行微调。永不放弃。这改变了一切。真相大白了。
一二三四五六七八九十百千万亿第一第二最后今天明天昨天时间地点人物事件原因结果开始结束
我们他们你们这个那个什么为什么怎么样可以不可以知道不知道喜欢不喜欢重要简单复杂学习工作生活朋友家人
"""


def build(out_dir: str | Path, vocab_size: int = 1536) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=1)
    corpus = [line for line in (_EN + _ZH).splitlines() if line.strip()] * 4
    tok.train_from_iterator(corpus, trainer=trainer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|pad|>", "unk_token": None, "model_max_length": 2048,
        "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
    }, indent=2, ensure_ascii=False) + "\n")
    return out


if __name__ == "__main__":
    print(build(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parents[1] / "assets" / "tiny_tokenizer"))
