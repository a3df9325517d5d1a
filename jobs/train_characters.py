"""Train one image LoRA per character folder on a Ray cluster (one Ray Tune trial each).

    ray job submit --working-dir . -- python jobs/train_characters.py --config configs/frames.yaml \
        input=runs/frames/sets output=runs/frames/models model.name=/models/sd15

Same arguments as ``rayft frames train`` (any config key as key=value; `--help` lists them).
Under ``ray job submit`` the stage joins the job's cluster (RAY_ADDRESS) and runs as many
characters at once as its GPUs/CPUs/memory fit (train.gpus_per_character, train.cpus_per_character,
train.memory_gb). A character that fails is recorded in <output>/pipeline_results.json and the
others go on; a resubmit skips finished characters and resumes interrupted ones from their last
checkpoint. Prints the path of pipeline_results.json last.
"""
import os
import sys

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from rayft.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["frames", "train", *sys.argv[1:]]))
