"""Embed every frame of every episode folder with open_clip on a Ray cluster.

    ray job submit --working-dir . -- python jobs/frames_embed.py --config configs/frames.yaml \
        input=/data/frames output=runs/frames/emb

Same arguments as ``rayft frames embed`` (any config key as key=value; `--help` lists
them). Under ``ray job submit`` the stage joins the job's cluster (RAY_ADDRESS) and puts
one embedding actor on each GPU (embed.concurrency to change); otherwise it starts a
local Ray. Resumable: a resubmit skips episodes that have a _done/ marker. Prints the
output directory last; <output>/report.json has the counts, rejects and frames/s. Then:
jobs/frames_cluster.py input=<output> ... and jobs/frames_export.py ... (or ``rayft frames cluster|export``).
"""
import os
import sys

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from rayft.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["frames", "embed", *sys.argv[1:]]))
