"""Huey on the benchmark's Redis: task module and producer side."""

from __future__ import annotations

import os
import sys
from typing import Any
from urllib.parse import urlsplit

from common import redis_url, time_calls, time_round_trips
from huey import RedisHuey

_u = urlsplit(redis_url("huey"))
huey = RedisHuey("bench", host=_u.hostname, port=_u.port, db=int(_u.path.lstrip("/")))


@huey.task()
def noop(i: int) -> int:
    return i


NAME = "Huey"
SETTINGS = {
    "one": "`huey_consumer peer_huey.huey`: defaults, 1 worker thread (-w 1 -k thread)",
    "two": "`huey_consumer peer_huey.huey -k process -w 2`",
    "round_trip": "`huey_consumer peer_huey.huey` (idle: BRPOP with 1 s read timeout)",
    "acks": "none: a message is popped before it runs (at most once)",
    "results": "return values stored in a Redis hash (default `results=True`)",
    "enqueue": "`noop(i)`",
    "bulk": "n/a: `noop.map()` enqueues one by one",
    "visible": "`result.get(preserve=True)` is not None (spin)",
}


def worker_commands(processes: int) -> list[list[str]]:
    bin_ = os.path.join(os.path.dirname(sys.executable), "huey_consumer")
    cmd = [bin_, "peer_huey.huey", "-q"]
    if processes > 1:
        cmd += ["-k", "process", "-w", str(processes)]
    return [cmd]


def single(n: int, warmup: int) -> dict[str, Any]:
    return time_calls(noop, n, warmup, paired_ping=redis_url("floor"))


bulk = None


def fill(n: int) -> None:
    for i in range(n):
        noop(i)


def round_trip(n: int, warmup: int, cap_s: float) -> dict[str, Any]:
    return time_round_trips(noop, lambda res: res.get(preserve=True) is not None, n, warmup, cap_s)


def queued(r: Any, n: int) -> int:
    return int(r.llen("huey.redis.bench"))


def remaining(r: Any, n: int) -> int:
    # at most once: popped jobs leave no trace until their result is stored
    return n - int(r.hlen("huey.results.bench"))


def results_stored(r: Any) -> int:
    return int(r.hlen("huey.results.bench"))
