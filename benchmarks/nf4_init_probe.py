"""Can initialisation close the nf4 quality gap on SmolLM2-135M (issue 19 item 1)? An ad-hoc probe.

The step-0 mean loss over the first 24 W1 sample pairs is computed for three models: the fp32
base, the nf4 base (rayft.train.lowbit.load_quantized: bitsandbytes Linear4bit), and the nf4
base plus a LoftQ-initialised LoRA on every linear at each rank given. LoftQ uses peft's
``replace_lora_weights_loftq``. Its ``_loftq_init_new`` hard-codes a CUDA/XPU device, so here it
is replaced by the same three steps on CPU: dequantize_4bit, the residual, and peft's own
``_low_rank_decomposition``. No Ray. Run:

    .venv/bin/python benchmarks/nf4_init_probe.py 32 128
"""
import json, time, torch, sys
torch.set_num_threads(2)
from rayft.models.load import resolve_source, load_model
from rayft.train.lowbit import load_quantized
from transformers import AutoTokenizer
src = resolve_source("smollm2-135m-instruct")
tok = AutoTokenizer.from_pretrained(src)
rows = [json.loads(l) for l in open("src/rayft/assets/samples/subtitle_pairs.jsonl")][:24]
batch = [tok(" ".join(str(v) for v in r.values()), return_tensors="pt", truncation=True, max_length=192)["input_ids"] for r in rows]
@torch.no_grad()
def loss(m):
    m.eval(); return sum(m(input_ids=ids, labels=ids).loss.item() for ids in batch) / len(batch)
base = load_model(src, None, "float32"); print("fp32", round(loss(base), 4), flush=True); del base
from peft import LoraConfig, get_peft_model, replace_lora_weights_loftq
import peft.utils.loftq_utils as lu
@torch.no_grad()
def _cpu_init(qweight, weight, num_bits, reduced_rank):
    import bitsandbytes as bnb
    deq = bnb.functional.dequantize_4bit(qweight.data, qweight.quant_state)
    out = lu._low_rank_decomposition(weight.float() - deq.float(), reduced_rank=reduced_rank)
    return out["R"], out["L"]
lu._loftq_init_new = _cpu_init
mods = ["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"]
for r in [int(x) for x in sys.argv[1:]]:
    q = load_quantized(src, "nf4", torch.float32)
    pm = get_peft_model(q, LoraConfig(r=r, lora_alpha=r, target_modules=mods, lora_dropout=0.0))
    t = time.time(); replace_lora_weights_loftq(pm, model_path=src + "/model.safetensors")
    print(f"nf4 + loftq r={r} all linears", round(loss(pm), 4), f"({time.time()-t:.0f} s)", flush=True)
    del pm, q
