"""Inspect a dataset before training (formats, rejects by reason, token lengths) as a Ray job.

    ray job submit --working-dir . -- python jobs/data_inspect.py path=data/chat.jsonl \
        model=smollm2-135m-instruct max_seq_len=512 out=runs/inspect

Same arguments and function as ``rayft data inspect`` (any config key as key=value;
`--help` lists them). Runs in the job's driver process (no Ray tasks). Prints the output
directory (inspect.json, token_lengths.png) last.
"""
import os
import sys

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from rayft.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["data", "inspect", *sys.argv[1:]]))
