"""A real multi-node Ray cluster on this machine for tests (issue 16): ``ray.cluster_utils.Cluster``
starts a head and worker nodes, each its own raylet (own object store, own worker pool), so a
node can be removed mid-run exactly as a machine dies.

Layout: the head has 0 CPUs (it holds the driver and Ray Train's controller, which is pinned to
the driver's node), every worker node has ``cpus`` CPUs and one unit of a custom resource named
after it (``{"node_a": 1}``), so 1-CPU workers are forced onto different nodes and a test can
pin a task or replica to a named node.

The pytest fixture ``multinode`` (tests/conftest.py) wraps this around the session-scoped local
Ray: it shuts that one down first (one driver connects to one cluster) and restarts it after.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

LOOPBACK = "127.0.0.1"
NODE_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
#: The GCS marks a silent node dead after ~3 s instead of Ray's default ~30 s, so a removed
#: node's resources and placement-group bundles are released within a test's budget.
HEALTH_CHECK = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}


@dataclass
class MultiNode:
    """A running ``Cluster`` plus its worker nodes by name."""

    cluster: object                        # ray.cluster_utils.Cluster
    nodes: dict = field(default_factory=dict)  # name -> ray._private.node.Node
    keeper: object = None                  # concurrent.futures.ThreadPoolExecutor (see _keeper)

    @property
    def address(self) -> str:
        return self.cluster.address

    def add(self, name: str, cpus: float = 1, timeout: float = 60):
        """Start a worker node ``name`` (its own raylet) with ``cpus`` CPUs and ``{name: 1}``;
        returns once the GCS lists it alive. Callable from any thread: ray's Node installs a
        SIGTERM handler, which Python allows only in the main thread (from a test's fault thread
        add_node raised ValueError, so the replacement node never joined); off the main thread
        that handler is skipped (the cluster's shutdown stops the node's processes anyway)."""
        import threading

        kw = dict(num_cpus=cpus, resources={name: 1}, node_ip_address=LOOPBACK,
                  object_store_memory=150 * 2**20, include_dashboard=False, wait=True)
        if threading.current_thread() is threading.main_thread():
            node = self.cluster.add_node(**kw)
        else:
            node = self._keeper().submit(self._add_off_main, kw).result()
        self.nodes[name] = node
        self.wait_alive(timeout)
        return node

    def _keeper(self):
        """The one thread that starts nodes for callers off the main thread, alive until the
        process exits. Ray starts a node's raylet and agents with prctl(PR_SET_PDEATHSIG,
        SIGKILL), which fires when the *thread* that forked them ends: a node added from a test's
        short-lived fault thread died with that thread (a replacement node vanished 60 s after it
        joined, and the next run waited forever for its CPUs)."""
        import concurrent.futures

        if self.keeper is None:  # its idle worker thread blocks on the queue; never shut down
            self.keeper = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="multinode-keeper")
        return self.keeper

    def _add_off_main(self, kw: dict):
        import ray._private.utils as ray_utils

        real = ray_utils.set_sigterm_handler
        ray_utils.set_sigterm_handler = lambda handler: None
        try:
            return self.cluster.add_node(**kw)
        finally:
            ray_utils.set_sigterm_handler = real

    def remove(self, name: str, graceful: bool = False) -> None:
        """Kill node ``name``'s raylet, object store and agents (SIGKILL unless ``graceful``): its
        worker processes lose their raylet and exit, its objects are gone."""
        self.cluster.remove_node(self.nodes.pop(name), allow_graceful=graceful)

    def wait_alive(self, timeout: float = 60) -> None:
        self.cluster.wait_for_nodes(timeout=timeout)

    def node_id(self, name: str) -> str:
        return self.nodes[name].node_id

    def raylet_pids(self) -> dict:
        """{raylet pid: node name} ("head" for the head)."""
        out = {raylet_pid(self.cluster.head_node): "head"}
        out |= {raylet_pid(n): name for name, n in list(self.nodes.items())}  # a copy: nodes come and go
        return out

    def node_of_pid(self, pid: int) -> str | None:
        """Name of the node whose raylet started process ``pid`` (Ray worker processes are the
        raylet's children), or None when it is no Ray worker of this cluster."""
        import psutil

        raylets = self.raylet_pids()
        try:
            proc = psutil.Process(pid)
            for p in [proc, *proc.parents()]:
                if p.pid in raylets:
                    return raylets[p.pid]
        except psutil.NoSuchProcess:
            return None
        return None

    def actor_nodes(self, class_part: str) -> dict:
        """{pid: node name} of the live actors whose class name contains ``class_part`` (from the
        GCS actor table: no dashboard needed); "?" for a node this object does not know."""
        from ray._private.state import actors

        names = {n.node_id: name for name, n in list(self.nodes.items())}
        return {a["Pid"]: names.get(a["Address"]["NodeID"], "?") for a in actors().values()
                if a.get("State") == "ALIVE" and class_part in (a.get("ActorClassName") or "")}


class WatchedBar:
    """A stage's own progress bar (rayft.progress.bar), wrapped for a fault thread: ``first`` is
    set at the first update (results have reached the driver: the stage's Ray work is under
    way), ``times["bar_end"]`` is when the bar closed (the work it counted had ended)."""

    def __init__(self, inner, first, times: dict):
        self.inner, self.first, self.times = inner, first, times

    def __enter__(self):
        self.inner.__enter__()
        return self

    def __exit__(self, *exc):
        self.times.setdefault("bar_end", time.time())
        return self.inner.__exit__(*exc)

    def update(self, n):
        self.first.set()
        self.inner.update(n)


def state() -> dict:
    """Placement groups and free resources per node, for a test's failure message."""
    import ray
    from ray._private.state import available_resources_per_node

    return {"placement_groups": {k: (v.get("state"), v.get("bundles_to_node_id"))
                                 for k, v in ray.util.placement_group_table().items()},
            "available": available_resources_per_node()}


def raylet_pid(node) -> int:
    from ray._private import ray_constants

    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def start(worker_nodes: tuple = ("node_a", "node_b"), cpus: float = 1, timeout: float = 90) -> MultiNode:
    """Head (0 CPU) + one ``cpus``-CPU node per name in ``worker_nodes``; not connected."""
    from ray.cluster_utils import Cluster

    for k, v in NODE_ENV.items():
        os.environ.setdefault(k, v)
    t0 = time.time()
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=0, resources={"head": 1}, node_ip_address=LOOPBACK, include_dashboard=False,
        object_store_memory=150 * 2**20, _system_config=HEALTH_CHECK))
    mn = MultiNode(cluster)
    try:
        for name in worker_nodes:
            mn.add(name, cpus, timeout=max(5.0, timeout - (time.time() - t0)))
    except BaseException:
        cluster.shutdown()
        raise
    return mn


def wait_for(pred, timeout: float, what: str, every: float = 0.2):
    """Poll ``pred()`` until it returns something truthy (returned) or fail after ``timeout`` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
