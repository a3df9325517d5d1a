"""Optional frames step: character-only RGBA crops of every frame, as a Ray job.

    ray job submit --working-dir . -- python jobs/frames_segment.py --config configs/frames.yaml \
        input=/data/frames output=runs/frames/seg

Same arguments and function as ``rayft frames segment`` (any config key as key=value;
`--help` lists them). Under ``ray job submit`` it joins the job's cluster (RAY_ADDRESS),
otherwise it starts a local Ray. Prints the output directory last.
"""
import os
import sys

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from rayft.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["frames", "segment", *sys.argv[1:]]))
