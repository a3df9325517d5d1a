"""Curate pair files on a Ray cluster.

    ray job submit --working-dir . -- python jobs/curate.py --config configs/curate.yaml \
        input='data/pairs/*.jsonl' output=runs/curated

Same arguments as ``rayft curate`` (any config key as key=value). Prints the summary line
(kept/rejected rows and the output directory) last; ``<output>/report.json`` has the details.
"""
import os
import sys

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
if os.environ.get("RAY_ADDRESS") and not any(a.startswith("ray.address=") for a in sys.argv[1:]):
    sys.argv.append("ray.address=auto")  # under `ray job submit`: join the job's cluster

from rayft.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["curate", *sys.argv[1:]]))
