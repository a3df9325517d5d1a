"""Export one training folder per character cluster (frames, captions, contact sheets) as a Ray job.

    ray job submit --working-dir . -- python jobs/frames_export.py --config configs/frames.yaml \
        input=runs/frames/clusters output=runs/frames/sets

Same arguments and function as ``rayft frames export`` (any config key as key=value;
`--help` lists them). Reads the output of jobs/frames_cluster.py and runs in the job's
driver process (no Ray tasks). Prints the output directory last.
"""
import os
import sys

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from rayft.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["frames", "export", *sys.argv[1:]]))
