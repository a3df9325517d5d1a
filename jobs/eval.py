"""Evaluate a training run against the champion and gate it.

    ray job submit --working-dir . -- python jobs/eval.py --config configs/eval.yaml \
        candidate=runs/tiny data.golden=data/golden.jsonl

Same arguments and function as ``rayft eval``: under ``ray job submit`` it joins the
job's cluster (RAY_ADDRESS), otherwise it starts a local Ray. The last line printed is
the path of eval.json (decision, reasons, metrics, registered version).
"""
import os
import sys

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from rayft.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
