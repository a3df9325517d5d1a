"""`rayft serve` on a real multi-node Ray cluster (issue 16): two model replicas on two nodes,
one node dies under a steady client load, and the clients keep getting answers.

The cluster (tests/multinode.py): a 0-CPU head (Serve's controller and an HTTP proxy) plus
node_a and node_b with 1 CPU each; ``replicas=2, num_cpus=1`` puts one replica on each. Every
node runs a Serve proxy on the same 127.0.0.1 port (Serve binds it with SO_REUSEPORT), so the
dying node takes a proxy with it too, as a real machine would. Clients are unmodified openai
clients with the library's default retries (2): what a user runs.
"""
from __future__ import annotations

import os
import threading
import time

import pytest

from rayft.config import load
from rayft.registry import Registry
from rayft.testing.net import free_port
from rayft.testing.runs import make_run

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(420)]
openai = pytest.importorskip("openai")
KEY = "test-key-mn"
APP = "rayft_mn"
CHAT = [{"role": "user", "content": "Rewrite as a viral hook: the detective opens the letter."}]


@pytest.fixture(scope="module")
def served(multinode, tmp_path_factory):
    from ray import serve

    from rayft.serve.config import ServeConfig
    from rayft.serve.run import start

    d = tmp_path_factory.mktemp("serve_mn")
    reg = Registry(str(d / "reg"), "en")
    v1 = reg.register(make_run(d / "en1", noise=0.5, lora_seed=1),
                      {"decision": "promote", "champion_version": None, "gate": {"golden_metric": "loss"},
                       "metrics": {"candidate": {"golden": {"loss": 1.0}}}})["version"]
    reg.promote(v1)
    os.environ["RAYFT_TEST_API_KEY_MN"] = KEY
    cfg = load(ServeConfig, os.path.join(os.path.dirname(__file__), "..", "configs", "serve.yaml"), [
        f"registry={d / 'reg'}", "models=[en]", f"port={free_port()}", "api_key_env=RAYFT_TEST_API_KEY_MN",
        "replicas=2", "num_cpus=1", "topology=single", "blocking=false", "max_tokens_default=8",
        f"app_name={APP}"])
    url = start(cfg)
    try:
        yield {"url": url, "v1": v1}
    finally:
        serve.shutdown()
        os.environ.pop("RAYFT_TEST_API_KEY_MN", None)


def test_node_loss_under_load_fails_no_request(multinode, served):
    """Remove (SIGKILL) the node of one replica while 3 clients send requests: no request fails
    (in-flight ones are retried by the client), and the survivor answers everything after."""
    placed = multinode.actor_nodes(f"ServeReplica:{APP}:")
    assert sorted(placed.values()) == ["node_a", "node_b"], placed  # one replica per node
    stop = threading.Event()
    ok, errors, retried = [], [], []

    def client_loop():
        cl = openai.OpenAI(base_url=f"{served['url']}/v1", api_key=KEY, timeout=120)  # default retries
        raw = cl.with_options(max_retries=0)
        while not stop.is_set():
            t0 = time.monotonic()
            try:  # first without retries, to count what the node loss costs a client ...
                r = raw.chat.completions.create(model="en", messages=CHAT, max_tokens=8)
            except Exception as e:  # noqa: BLE001 - every failure is counted
                retried.append((t0, repr(e)[:200]))
                try:  # ... then as a user's client does it: the library's retries
                    r = cl.chat.completions.create(model="en", messages=CHAT, max_tokens=8)
                except Exception as e2:  # noqa: BLE001
                    errors.append((t0, repr(e2)[:300]))
                    continue
            ok.append((time.monotonic(), r.model))

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 120
        while len(ok) < 6 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(ok) >= 6, (ok, errors, retried)
        removed_at = time.monotonic()
        multinode.remove("node_b", graceful=False)  # the machine dies: raylet, store, replica, proxy
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and sum(1 for t0, _ in ok if t0 > removed_at + 5) < 15:
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=150)
    after = [m for t0, m in ok if t0 > removed_at]
    late_fail = [e for t0, e in retried if t0 > removed_at + 10]
    print(f"node loss under load: {len(ok)} ok ({len(after)} after the removal), {len(retried)} failed "
          f"first try ({sum(1 for t0, _ in retried if t0 > removed_at)} after the removal, {len(late_fail)} "
          f"started > 10 s after it), {len(errors)} failed after the client's retries; first-try errors: "
          f"{[e for _, e in retried]}")
    assert errors == [], errors
    assert len(after) >= 15 and set(after) == {f"en:{served['v1']}"}
    assert late_fail == [], late_fail  # once Serve knows, nothing is routed to the dead replica
    survivors = multinode.actor_nodes(f"ServeReplica:{APP}:")
    assert list(survivors.values()) == ["node_a"]  # the survivor; no CPU for a replacement
