"""Merge a run's LoRA adapter into its base model and save a full safetensors model, as a Ray job.

    ray job submit --working-dir . -- python jobs/export.py run=runs/exp1 output=runs/exp1/merged

Same arguments and function as ``rayft export`` (any config key as key=value; `--help`
lists them). Runs in the job's driver process (no Ray tasks); the model directory is
written to a temp dir and renamed into place. Prints the output directory last.
"""
import os
import sys

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from rayft.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))
