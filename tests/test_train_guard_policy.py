"""The training guard's policy (train/guard.py), pure: no Ray, no torch. The guard inside a
real Ray Train run is tested in test_train_guard.py."""
from __future__ import annotations

import json

from rayft.train.guard import GuardCfg, TrainingGuard


def test_guard_nan_rolls_back_to_last_healthy_checkpoint_and_halves_lr():
    g = TrainingGuard(GuardCfg(max_rollbacks=2))
    for s in range(1, 11):
        assert g.on_step(s, 1.0).kind == "continue"
    assert g.on_checkpoint(10)
    g.on_step(11, 0.9)
    a = g.on_step(12, float("nan"))
    assert (a.kind, a.rollback_to, a.lr_scale) == ("rollback", 10, 0.5)
    assert a.events[0]["event"] == "nonfinite_rollback" and "step 10" in a.events[0]["message"]
    # resumed from 10; the next blow-up goes back to 10 again with lr x0.25
    a = g.on_step(11, float("inf"))
    assert (a.kind, a.rollback_to, a.lr_scale) == ("rollback", 10, 0.25)
    a = g.on_step(11, float("nan"))
    assert a.kind == "stop" and a.events[0]["event"] == "nonfinite_stop"
    assert [e["event"] for e in g.events] == ["nonfinite_rollback", "nonfinite_rollback", "nonfinite_stop"]


def test_guard_before_any_checkpoint_and_unhealthy_checkpoint():
    g = TrainingGuard()
    a = g.on_step(3, float("nan"))
    assert a.kind == "rollback" and a.rollback_to == 0  # the initial weights
    g2 = TrainingGuard(GuardCfg(max_rollbacks=0))
    assert g2.on_step(1, float("nan")).kind == "stop"
    # a non-finite val loss at the checkpoint step: that checkpoint is not healthy
    g3 = TrainingGuard()
    g3.on_checkpoint(5)
    g3.on_step(10, 1.0)
    act = g3.on_val_loss(10, float("nan"))
    assert act.kind == "rollback" and act.rollback_to == 5


def test_guard_warns_once_when_val_rises_three_in_a_row_and_round_trips():
    g = TrainingGuard()
    kinds = [g.on_val_loss(s, v).kind for s, v in enumerate([2.0, 2.1, 2.2, 2.3, 2.4, 1.0, 1.1, 1.2, 1.3])]
    assert kinds == ["continue", "continue", "continue", "warn", "continue", "continue", "continue",
                     "continue", "warn"]
    assert [e["event"] for e in g.events] == ["val_loss_rising", "val_loss_rising"]
    g.on_val_loss(9, 1.0)
    clone = TrainingGuard.from_state_dict(json.loads(json.dumps(g.state_dict())))
    assert clone.state_dict() == g.state_dict()
    # two rises then a drop: no warning
    g = TrainingGuard()
    assert [g.on_val_loss(s, v).kind for s, v in enumerate([1, 2, 3, 2, 3, 4])] == ["continue"] * 6
