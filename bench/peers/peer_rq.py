"""RQ on the benchmark's Redis: task module (``peer_rq.noop``) and producer side."""

from __future__ import annotations

import os
import sys
from typing import Any

from common import redis_url, time_batches, time_calls, time_round_trips
from redis import Redis
from rq import Queue


def noop(i: int) -> int:
    return i


NAME = "RQ"
SETTINGS = {
    "one": "`rq worker`: the default `rq.Worker`, which forks a work horse per job",
    "two": "2 x `rq worker`",
    "round_trip": "`rq worker` (idle: blocking BLMOVE/BZPOPMIN on the queue)",
    "acks": "job kept in the started registry while it runs; a dead worker's jobs are "
    "marked failed (abandoned), not re-run",
    "results": "stored by default (result_ttl 500 s, a Redis stream per job)",
    "enqueue": "`Queue.enqueue(noop, i)`",
    "bulk": "`Queue.enqueue_many([Queue.prepare_data(noop, (i,)), ...])` (one pipeline)",
    "visible": "`job.latest_result()` is not None (spin)",
}


def _queue() -> Queue:
    return Queue("default", connection=Redis.from_url(redis_url("rq")))


def worker_commands(processes: int) -> list[list[str]]:
    bin_ = os.path.join(os.path.dirname(sys.executable), "rq")
    cmd = [bin_, "worker", "-u", redis_url("rq"), "-q"]
    return [[*cmd, "default"] for _ in range(processes)]


def single(n: int, warmup: int) -> dict[str, Any]:
    q = _queue()
    return time_calls(lambda i: q.enqueue(noop, i), n, warmup, paired_ping=redis_url("floor"))


def bulk(n: int, batch: int) -> dict[str, Any]:
    q = _queue()
    return time_batches(
        lambda ids: q.enqueue_many([Queue.prepare_data(noop, (i,)) for i in ids]), n, batch
    )


def fill(n: int) -> None:
    q = _queue()
    for start in range(0, n, 1000):
        q.enqueue_many([Queue.prepare_data(noop, (i,)) for i in range(start, min(n, start + 1000))])


def round_trip(n: int, warmup: int, cap_s: float) -> dict[str, Any]:
    q = _queue()
    return time_round_trips(
        lambda i: q.enqueue(noop, i), lambda j: j.latest_result() is not None, n, warmup, cap_s
    )


def queued(r: Any, n: int) -> int:
    return int(r.llen("rq:queue:default"))


def remaining(r: Any, n: int) -> int:
    return int(r.llen("rq:queue:default")) + int(r.zcard("rq:wip:default"))


def results_stored(r: Any) -> int:
    return int(r.zcard("rq:finished:default"))
