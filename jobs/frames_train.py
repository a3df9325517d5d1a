"""Train one image LoRA per character folder (the output of jobs/frames_export.py) as a Ray job.

    ray job submit --working-dir . -- python jobs/frames_train.py --config configs/frames.yaml \
        input=runs/frames/sets output=runs/frames/loras

Same arguments and function as ``rayft frames train`` (any config key as key=value;
`--help` lists them). Under ``ray job submit`` it joins the job's cluster (RAY_ADDRESS),
otherwise it starts a local Ray.
"""
import os
import sys

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from rayft.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["frames", "train", *sys.argv[1:]]))
