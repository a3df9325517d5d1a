"""Issue 20 item 2: how a model replica forms batches (ModelServer._batch_loop), without Ray.

A fake engine records every batch it is given and takes a fixed time per batch, so the
assertions are about batch composition: a burst goes in one batch, requests that queue while a
batch runs all join the next one, clients answered together come back into one batch (the
wait), a lone client is never delayed by the wait, and a caller that left is not generated.
"""
from __future__ import annotations

import asyncio
import time

from rayft.serve.app import ModelServer

STEP_S = 0.05


class FakeEngine:
    def __init__(self):
        self.batches: list[list[int]] = []

    def run_batch(self, jobs):
        self.batches.append([j.rid for j in jobs])
        time.sleep(STEP_S)
        return [{"rid": j.rid} for j in jobs]


class Job:
    on_event = None

    def __init__(self, rid: int):
        self.rid = rid


def server(max_batch: int = 8, wait_s: float = 0.1):
    s = object.__new__(ModelServer.func_or_class)  # the replica class without loading a model
    s.engine = FakeEngine()
    s.max_batch, s.batch_wait_s = max_batch, wait_s
    s._pending = s._arrived = s._plock = s._loop_task = None
    s._last_end, s._inflight, s._peak = 0.0, 0, 0
    return s


def test_a_burst_is_one_batch_and_results_go_to_their_callers():
    s = server()

    async def main():
        return await asyncio.gather(*(s._batch(Job(i)) for i in range(8)))

    out = asyncio.run(main())
    assert out == [("ok", {"rid": i}) for i in range(8)]
    assert s.engine.batches == [list(range(8))]


def test_requests_queued_during_a_batch_all_join_the_next_and_max_batch_holds():
    s = server(max_batch=4)

    async def main():
        first = asyncio.ensure_future(s._batch(Job(0)))
        await asyncio.sleep(STEP_S / 5)  # batch [0] is running
        rest = [asyncio.ensure_future(s._batch(Job(i))) for i in range(1, 7)]
        await asyncio.gather(first, *rest)

    asyncio.run(main())
    assert s.engine.batches == [[0], [1, 2, 3, 4], [5, 6]]


def test_clients_answered_together_come_back_into_one_batch():
    """Four closed-loop clients that answer after a short think time: without the wait the
    next batch would start with the first one back."""
    s = server(wait_s=1.0)

    async def client(c: int):
        for k in range(4):
            await s._batch(Job(10 * c + k))
            await asyncio.sleep(0.002 * (c + 1))  # come back at slightly different times

    async def main():
        await asyncio.gather(*(client(c) for c in range(4)))

    asyncio.run(main())
    assert [len(b) for b in s.engine.batches] == [4, 4, 4, 4], s.engine.batches


def test_a_lone_client_never_waits():
    s = server(wait_s=5.0)  # a wait this long would show in the wall time

    async def main():
        for i in range(4):
            await s._batch(Job(i))

    t = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - t < 2.0
    assert s.engine.batches == [[0], [1], [2], [3]]


def test_a_caller_that_left_while_queued_is_not_generated():
    s = server()

    async def main():
        first = asyncio.ensure_future(s._batch(Job(0)))
        await asyncio.sleep(STEP_S / 5)
        gone = asyncio.ensure_future(s._batch(Job(1)))
        stays = asyncio.ensure_future(s._batch(Job(2)))
        await asyncio.sleep(0)
        gone.cancel()  # e.g. the client disconnected before its batch started
        return await asyncio.gather(first, stays)

    out = asyncio.run(main())
    assert out == [("ok", {"rid": 0}), ("ok", {"rid": 2})]
    assert s.engine.batches == [[0], [2]]


def test_an_engine_failure_reaches_every_request_of_its_batch_only():
    s = server()
    calls = []

    def run_batch(jobs):
        calls.append(len(jobs))
        if len(calls) == 1:
            raise RuntimeError("engine down")
        return [{"rid": j.rid} for j in jobs]

    s.engine.run_batch = run_batch

    async def main():
        a = await asyncio.gather(*(s._batch(Job(i)) for i in range(3)))
        b = await s._batch(Job(9))
        return a, b

    a, b = asyncio.run(main())
    assert [k for k, _ in a] == ["error"] * 3 and all(isinstance(e, RuntimeError) for _, e in a)
    assert b == ("ok", {"rid": 9})


class ContinuousEngine:
    """Like the transformers engine's decode loop: each row takes ``steps`` steps of STEP_S/5;
    between steps it asks ``take`` for joiners while it has fewer than max_rows rows, and
    reports each row to ``done`` when it ends."""
    continuous = True

    def __init__(self, steps: int = 10):
        self.steps, self.joined, self.max_rows_seen = steps, [], 0

    def run_batch(self, jobs, take, done, max_rows):
        rows = {id(j): [j, self.steps] for j in jobs}
        out = {}
        while rows:
            time.sleep(STEP_S / 5)
            self.max_rows_seen = max(self.max_rows_seen, len(rows))
            for k in list(rows):
                rows[k][1] -= 1
                if rows[k][1] == 0:
                    j = rows.pop(k)[0]
                    out[id(j)] = {"rid": j.rid, "end": time.monotonic()}
                    done(j, out[id(j)])
            if len(rows) < max_rows:
                for j in take(0, max_rows - len(rows)):
                    self.joined.append(j.rid)
                    rows[id(j)] = [j, self.steps]
        return [out[id(j)] for j in jobs]


class KeyedJob(Job):
    def __init__(self, rid: int, key=0):
        super().__init__(rid)
        self.key = key

    def group_key(self, i):
        return self.key


def test_continuous_engine_requests_join_the_running_batch_and_answer_when_their_row_ends():
    """Issue 20 item 2: with an engine that supports it, a request arriving while a batch runs
    joins it (no waiting for the batch to end), gets its answer as soon as its own row ends,
    max_batch caps the rows, and a request for another version is not joined."""
    s = server(max_batch=3)
    s.engine = ContinuousEngine(steps=10)  # a row: 10 steps x 10 ms

    async def main():
        first = asyncio.ensure_future(s._batch(KeyedJob(0)))
        await asyncio.sleep(STEP_S)  # the batch is about half-way through row 0
        late = [asyncio.ensure_future(s._batch(KeyedJob(i))) for i in (1, 2, 3)]
        other = asyncio.ensure_future(s._batch(KeyedJob(9, key=1)))
        await first
        got0 = time.monotonic()  # when row 0's caller had its answer
        res = await asyncio.gather(first, *late, other)
        return got0, res

    got0, res = asyncio.run(main())
    assert [r["rid"] for _, r in res] == [0, 1, 2, 3, 9]
    # 1 and 2 joined row 0's running batch, 3 when row 0 left; 9 (another version) was not joined
    assert s.engine.joined == [1, 2, 3]
    assert s.engine.max_rows_seen == 3  # max_batch
    assert got0 < res[3][1]["end"]  # row 0's caller was answered before the batch ended
