"""The promotion gate and the lexical metrics: pure, no Ray."""
from __future__ import annotations

import json
import math

import pytest

from rayft.evaluate import metrics as M
from rayft.evaluate.gate import GateCfg, decide, relative_gain


def _m(cand_golden_sim=0.60, champ_golden_sim=0.50, cand_val=2.0, champ_val=2.1, **extra):
    def block(sim, loss):
        return {"loss": loss, "perplexity": math.exp(loss) if math.isfinite(loss) else loss,
                "similarity": sim, "rows": 10, "tokens": 100}
    return {"candidate": {"val": block(0.4, cand_val), "golden": block(cand_golden_sim, 1.5)},
            "champion": {"val": block(0.4, champ_val), "golden": block(champ_golden_sim, 1.6)}, **extra}


def test_gate_accepts_clear_improvement_and_lists_every_rule():
    d = decide(_m(), GateCfg())
    assert d["accept"] and d["decision"] == "promote"
    assert [c["rule"] for c in d["checks"]] == ["finite", "golden", "val"]
    assert all(r.startswith("PASS") for r in d["reasons"])
    assert "+20.00%" in d["reasons"][1]
    json.dumps(d)  # goes into eval.json as is


@pytest.mark.parametrize("where", [("candidate", "golden", "similarity"), ("candidate", "val", "loss"),
                                   ("champion", "golden", "loss")])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_gate_rejects_nonfinite_anywhere(where, bad):
    m = _m()
    who, split, key = where
    m[who][split][key] = bad
    d = decide(m, GateCfg())
    assert not d["accept"] and d["decision"] == "reject"
    assert d["reasons"][0].startswith("FAIL finite") and f"{who}.{split}.{key}" in d["reasons"][0]


def test_gate_requires_one_percent_golden_improvement():
    # +0.5 % relative: not enough
    d = decide(_m(cand_golden_sim=0.5025, champ_golden_sim=0.5), GateCfg())
    assert not d["accept"]
    assert any(r.startswith("FAIL golden") and "+0.50%" in r and ">= 1.00%" in r for r in d["reasons"])
    # exactly +1 % passes (>=), equal fails
    assert decide(_m(cand_golden_sim=0.505, champ_golden_sim=0.5), GateCfg())["accept"]
    assert not decide(_m(cand_golden_sim=0.5, champ_golden_sim=0.5), GateCfg())["accept"]


def test_gate_loss_direction_and_val_regression():
    m = _m()
    m["candidate"]["golden"]["loss"], m["champion"]["golden"]["loss"] = 1.0, 1.2
    assert decide(m, GateCfg(golden_metric="loss"))["accept"]
    m["candidate"]["golden"]["loss"] = 1.3  # worse loss
    d = decide(m, GateCfg(golden_metric="loss"))
    assert not d["accept"] and "FAIL golden" in d["reasons"][1]
    # validation regressed by 5 %: rejected by default, allowed with a 10 % tolerance
    d = decide(_m(cand_val=2.1, champ_val=2.0), GateCfg())
    assert not d["accept"] and d["reasons"][2].startswith("FAIL val") and "-5.00%" in d["reasons"][2]
    assert decide(_m(cand_val=2.1, champ_val=2.0), GateCfg(max_val_regression=0.1))["accept"]


def test_gate_missing_scores_and_empty_val():
    m = _m()
    m["candidate"]["golden"]["similarity"] = None
    d = decide(m, GateCfg())
    assert not d["accept"] and "golden similarity missing" in d["reasons"][1]
    m = _m()
    m["candidate"]["val"] = {"loss": None, "rows": 0}
    assert not decide(m, GateCfg())["accept"]
    assert decide(m, GateCfg(require_val=False))["accept"]


def test_relative_gain_edge_cases():
    assert relative_gain(0.1, 0.0, True) == math.inf
    assert relative_gain(0.0, 0.0, True) == 0.0
    assert relative_gain(-0.5, -1.0, True) == pytest.approx(0.5)  # cosine can be negative


def test_lexical_metrics():
    assert M.chrf("the cat sat", "the cat sat") == pytest.approx(1.0)
    assert M.chrf("", "x") == 0.0
    assert 0 < M.chrf("the cat sat on the mat", "the cat is on the mat") < 1
    assert M.chrf("侦探终于打开了红色的信", "侦探打开了红信") > M.chrf("完全不同的句子", "侦探打开了红信")
    assert M.rouge_l("a b c d", "a b c d") == pytest.approx(1.0)
    assert M.rouge_l("a x c", "a b c") == pytest.approx(2 / 3)
    assert M.tokens("我爱 you") == ["我", "爱", "you"]
    assert M.perplexity(float("nan")) != M.perplexity(float("nan"))
    assert M.perplexity(1e6) == math.inf
    assert M.mean_token_loss([2.0, 6.0], [1, 3]) == pytest.approx(2.0)
    s = M.summarize([{"c_loss_sum": 2.0, "c_tokens": 2, "c_similarity": 0.5},
                     {"c_loss_sum": 4.0, "c_tokens": 2, "c_similarity": 1.0}], "c")
    assert s == {"loss": 1.5, "perplexity": pytest.approx(math.exp(1.5)), "similarity": 0.75,
                 "rows": 2, "tokens": 4}
