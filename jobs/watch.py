"""The `rayft watch` daemon as a Ray job (visible in the Ray dashboard's Jobs page).

    ray job submit --working-dir . -- python jobs/watch.py --config configs/watch.yaml \
        input=data/incoming dir=runs/watch recipe=configs/tiny.yaml

Same arguments as ``rayft watch`` (and ``python jobs/watch.py status|pause|resume|stop dir=...``).
Under ``ray job submit`` every stage joins the job's cluster (RAY_ADDRESS). The daemon's
state lives in the watch directory, so a stopped or killed job resubmitted with the same
arguments continues the same cycle (the interrupted training stage resumes from its last
checkpoint). Restart policy: a job is not restarted by Ray; add ``watch.detached=true`` and the
job only starts a detached Ray actor that runs the daemon, restarts it when it dies and is
itself restarted by Ray (rayft.watch.detached), then the job ends. A second daemon on the same
watch dir exits with code 2.
"""
import os
import sys

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from rayft.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["watch", *sys.argv[1:]]))
