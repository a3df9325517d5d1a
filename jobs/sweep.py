"""Ray Tune sweep over the `rayft train` loop on a Ray cluster.

    ray job submit --working-dir . -- python jobs/sweep.py --config configs/sweep.yaml \
        sweep.name=lr-rank sweep.num_samples=16

Same arguments as ``rayft sweep`` (any config key as key=value) and the same function:
under ``ray job submit`` the sweep joins the job's cluster (RAY_ADDRESS); otherwise it
starts a local Ray. Rerunning the same sweep.name resumes it. The last line printed is
the best trial's run directory (a candidate for ``rayft eval``).
"""
import os
import sys

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from rayft.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
