"""Moved to rayft.train.guard (a training policy); this alias goes once train/config.py imports it there."""
from ..train.guard import Action, GuardCfg, TrainingGuard  # noqa: F401
