"""Dramatiq on the benchmark's Redis (broker, Results backend): actor module, producer side."""

from __future__ import annotations

import os
import sys
from typing import Any

import dramatiq
from common import redis_url, time_calls, time_round_trips
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import ResultMissing, Results
from dramatiq.results.backends.redis import RedisBackend

broker = RedisBroker(url=redis_url("dramatiq"))
backend = RedisBackend(url=redis_url("dramatiq"))
broker.add_middleware(Results(backend=backend))
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True, queue_name="default")
def noop(i: int) -> int:
    return i


NAME = "Dramatiq"
SETTINGS = {
    "one": "`dramatiq peer_dramatiq:broker -p 1 -t 8`: 1 worker process, 8 threads (default), "
    "prefetch 2 x threads = 16 (default)",
    "two": "`dramatiq peer_dramatiq:broker -p 2 -t 8` (the default -p on this 2-CPU machine)",
    "round_trip": "`dramatiq peer_dramatiq:broker -p 1 -t 8` (idle: polls with backoff up to "
    "the 1 s worker timeout)",
    "acks": "after the actor ran (message in the worker's ack set until then; at least once)",
    "results": "`Results` middleware with the Redis backend, `store_results=True` (10-min TTL)",
    "enqueue": "`noop.send(i)`",
    "bulk": "n/a: `group()` enqueues one message per call",
    "visible": "`message.get_result()` stops raising ResultMissing (spin)",
}


def worker_commands(processes: int) -> list[list[str]]:
    bin_ = os.path.join(os.path.dirname(sys.executable), "dramatiq")
    return [[bin_, "peer_dramatiq:broker", "-p", str(processes), "-t", "8", "--skip-logging"]]


def single(n: int, warmup: int) -> dict[str, Any]:
    return time_calls(noop.send, n, warmup, paired_ping=redis_url("floor"))


bulk = None


def fill(n: int) -> None:
    for i in range(n):
        noop.send(i)


def _visible(message: Any) -> bool:
    try:
        message.get_result(backend=backend)
    except ResultMissing:
        return False
    return True


def round_trip(n: int, warmup: int, cap_s: float) -> dict[str, Any]:
    return time_round_trips(noop.send, _visible, n, warmup, cap_s)


def queued(r: Any, n: int) -> int:
    return int(r.llen("dramatiq:default"))


def remaining(r: Any, n: int) -> int:
    # a message body stays in the .msgs hash until it is acked
    return int(r.hlen("dramatiq:default.msgs"))


def results_stored(r: Any) -> int:
    # the Results backend keys are bare md5 hex digests (32 characters, no namespace)
    return sum(1 for k in r.scan_iter(count=5000) if len(k) == 32 and b":" not in k)
