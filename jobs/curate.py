"""Curate pair files on a Ray cluster.

    ray job submit --working-dir . -- python jobs/curate.py --config configs/curate.yaml \
        input='data/pairs/*.jsonl' output=runs/curated

Same arguments as ``rayft curate`` (any config key as key=value); under ``ray job submit``
the stage joins the job's cluster (RAY_ADDRESS), otherwise it starts a local Ray. Prints
the summary line (kept/rejected rows, output directory) last; ``<output>/report.json``
has the per-filter counts.
"""
import os
import sys

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from rayft.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["curate", *sys.argv[1:]]))
