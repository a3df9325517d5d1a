"""Host the registry champions behind an OpenAI-compatible API on Ray Serve.

    RAYFT_API_KEY=secret ray job submit --working-dir . -- python jobs/serve.py \
        --config configs/serve.yaml registry=runs/registry

Same arguments and function as ``rayft serve``. Under ``ray job submit`` the app is
deployed on the job's cluster (RAY_ADDRESS); set ``blocking=false`` to deploy and exit
(the app keeps running on the cluster), otherwise the job stays up until stopped.
"""
import os
import sys

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from rayft.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
