"""Host the registry champions behind an OpenAI-compatible API on Ray Serve.

The API key must reach the JOB's process: an environment variable set in front of
``ray job submit`` stays on the submitting machine. Pass it in the job's runtime
environment (the value is expanded by your shell; note that Ray keeps runtime_env with the
job, so anyone who can list the cluster's jobs can read it)::

    ray job submit --working-dir . --runtime-env-json "{\"env_vars\": {\"RAYFT_API_KEY\": \"$RAYFT_API_KEY\"}}" -- python jobs/serve.py --config configs/serve.yaml registry=runs/registry

or, better, keep it in a file on the cluster's nodes and pass its path (only the path
travels with the job)::

    ray job submit --working-dir . -- python jobs/serve.py --config configs/serve.yaml registry=runs/registry api_key_file=/etc/rayft/api_key

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
