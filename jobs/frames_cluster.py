"""Cluster frame embeddings into characters (streaming PCA + HDBSCAN) as a Ray job.

    ray job submit --working-dir . -- python jobs/frames_cluster.py --config configs/frames.yaml \
        input=runs/frames/emb output=runs/frames/clusters

Same arguments and function as ``rayft frames cluster`` (any config key as key=value;
`--help` lists them). Reads the Parquet written by jobs/frames_embed.py and runs in the
job's driver process (no Ray tasks). Resumable: a finished output is not redone. Prints the
output directory last (labels Parquet + clusters.json). Then: jobs/frames_export.py.
"""
import os
import sys

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from rayft.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["frames", "cluster", *sys.argv[1:]]))
