"""Fine-tune on a Ray cluster.

    ray job submit --working-dir . -- python jobs/train.py --config configs/tiny.yaml \
        train.max_steps=40 run.name=exp1

Same arguments as ``rayft train`` (any config key as key=value) and the same function:
under ``ray job submit`` the run joins the job's cluster (RAY_ADDRESS); otherwise it
starts a local Ray. The last line printed is the run directory.
"""
import os
import sys

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from rayft.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
