"""tune/reaper.py leans on Ray Train internals (no public API reaches Ray's orphaned
placement-group cleaner without the dashboard). Pure checks, no Ray started: they fail loudly
when a Ray upgrade moves what the reaper reads, instead of the sweep silently leaking CPUs."""
from __future__ import annotations

import inspect

import ray

from rayft.tune import reaper


def test_ray_version_is_the_one_the_reaper_was_checked_against():
    assert ray.__version__ == reaper.RAY_TESTED, (
        f"Ray is {ray.__version__}, tune/reaper.py was checked against {reaper.RAY_TESTED}: re-read Ray Train's "
        "PlacementGroupCleanerCallback / WorkerGroupState / controller callbacks against reaper.py (and the "
        "stopped-trial test in test_sweep_run.py), then set reaper.RAY_TESTED")


def test_ray_train_internals_the_reaper_reads():
    from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
    from ray.train.v2._internal.execution.callback import ControllerCallback, WorkerGroupCallback
    from ray.train.v2._internal.execution.worker_group.placement_group_handle import PlacementGroupHandle
    from ray.train.v2._internal.execution.worker_group.state import WorkerGroupState
    from ray.train.v2._internal.execution.worker_group.worker_group import WorkerGroup
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    assert "after_worker_group_start" in vars(WorkerGroupCallback) and "after_controller_start" in vars(ControllerCallback)
    assert callable(WorkerGroup.get_worker_group_state)
    assert "placement_group_handle" in WorkerGroupState.__dataclass_fields__
    assert isinstance(PlacementGroupHandle.placement_group, property)
    # the trainer still adds Ray's cleaner by default, and keeps its actor handle where we look
    assert "PlacementGroupCleanerCallback()" in inspect.getsource(DataParallelTrainer._create_default_callbacks)
    cb = PlacementGroupCleanerCallback()
    assert "_cleaner" in vars(cb)
    cb._cleaner = handle = object()
    assert reaper.ray_cleaner_handle() is handle
