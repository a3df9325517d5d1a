"""Free what a stopped trial's Ray Train run leaves behind.

When ASHA stops a trial, Tune ends the trial's actor; its Ray Train controller and
workers die with it (owner fate-sharing), but the workers' placement group is scoped to
the job, not to the controller. Ray Train 2.60 frees it from a detached
PlacementGroupCleaner actor that polls the controller through the state API - which needs
the dashboard. On a cluster started without one (`ray.init(include_dashboard=False)`:
local runs, tests) the cleaner never sees the controller die: the CPUs stay reserved, the
next trials wait for them forever, and each cleaner (~110 MB) lingers.

The Reaper (one per sweep, 0 CPU, owned by the sweep driver) watches every trial's
controller by pinging its actor handle and, once it is dead, removes the placement group
and kills the orphaned cleaner. With a dashboard both are already gone: a no-op.

Ray internals used (no public API covers them: the cleaner is an unnamed detached actor, and
listing actors through ``ray.util.state`` needs the very dashboard that is missing): Ray Train's
controller/worker-group callbacks, the worker group's placement group handle, and the cleaner
handle that ``PlacementGroupCleanerCallback`` keeps in a private attribute. They were read
against Ray ``RAY_TESTED``; under another version the cleaner is left alone (the placement group
is still freed) and tests/test_tune_reaper.py fails until someone re-reads them.
"""
from __future__ import annotations

import gc
import threading
import time

import ray

#: the Ray version whose Ray Train internals this module was checked against
RAY_TESTED = "2.60.0"


@ray.remote(num_cpus=0)
class Reaper:
    def __init__(self, interval_s: float = 2.0):
        self._items: dict = {}  # key -> (controller handle, placement group, cleaner handle | None)
        self._lock = threading.Lock()
        self.reaped: list[str] = []
        self._interval = interval_s
        threading.Thread(target=self._loop, daemon=True).start()

    def register(self, key: str, controller, pg, cleaner=None) -> None:
        with self._lock:
            self._items[key] = (controller, pg, cleaner)

    def stats(self) -> dict:
        with self._lock:
            return {"watching": len(self._items), "reaped": list(self.reaped)}

    def _loop(self) -> None:
        while True:
            time.sleep(self._interval)
            with self._lock:
                items = list(self._items.items())
            for key, (controller, pg, cleaner) in items:
                if _alive(controller):
                    continue
                try:
                    ray.util.remove_placement_group(pg)
                except Exception:  # already removed by a graceful shutdown
                    pass
                if cleaner is not None:
                    try:
                        ray.kill(cleaner)
                    except Exception:
                        pass
                with self._lock:
                    self._items.pop(key, None)
                    self.reaped.append(key)


def _alive(actor) -> bool:
    try:
        ray.get(actor.__ray_ready__.remote(), timeout=10)
        return True
    except ray.exceptions.GetTimeoutError:  # busy (the controller is async: rarely): alive
        return True
    except ray.exceptions.RayActorError:
        return False


def ray_cleaner_handle():
    """This controller process's PlacementGroupCleaner actor handle (Ray Train keeps it in
    ``PlacementGroupCleanerCallback._cleaner``), or None under an unchecked Ray version."""
    if ray.__version__ != RAY_TESTED:
        return None
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback

    cb = next((o for o in gc.get_objects() if isinstance(o, PlacementGroupCleanerCallback)), None)
    return getattr(cb, "_cleaner", None)


def register_callback(reaper, key: str):
    """A Ray Train callback (run in the controller) that hands the worker group's placement
    group, the controller's own handle and Ray's cleaner actor to the Reaper.

    Uses Ray Train internals (controller/worker-group callbacks, which RunConfig accepts
    for such workarounds); any failure only disables the workaround.
    """
    from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback

    class RegisterWithReaper(ControllerCallback, WorkerGroupCallback):
        def after_worker_group_start(self, worker_group):
            import logging

            try:
                pg = worker_group.get_worker_group_state().placement_group_handle.placement_group
                me = ray.get_runtime_context().current_actor
                # Ray's own cleaner for this controller (detached): kill it too once reaped
                cleaner = ray_cleaner_handle()
                ray.get(reaper.register.remote(f"{key}:{pg.id.hex()}", me, pg, cleaner), timeout=30)
            except Exception as e:  # never fail training over the workaround
                logging.getLogger(__name__).warning("rayft sweep: placement group not registered "
                                                    "with the reaper (%s)", e)

    return RegisterWithReaper()
