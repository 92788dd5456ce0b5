"""Sleipnir on the benchmark's Redis: the task module its workers import, and the producer side."""

from __future__ import annotations

import os
import sys
from typing import Any

from common import SLEIPNIR_PREFIX, redis_url, time_batches, time_calls, time_round_trips

from sleipnir import App

PREFIX = SLEIPNIR_PREFIX
app = App(broker=f"{redis_url('sleipnir')}?prefix={PREFIX}")


@app.task
def noop(i: int) -> int:
    return i


NAME = "Sleipnir"
SETTINGS = {
    "one": "`sleipnir worker peer_sleipnir:app`: 1 process, -c 8 task threads and "
    "prefetch 8 (the defaults)",
    "two": "2 x `sleipnir worker peer_sleipnir:app`",
    "round_trip": "`sleipnir worker peer_sleipnir:app -c 8` (idle: blocks on BLPOP of the "
    "queue's wake list)",
    "acks": "after completion: the outcome is stored, then the job is acked (at least once, "
    "30 s lease)",
    "results": "always stored (Redis hash, 7-day TTL)",
    "enqueue": "`noop.delay(i)`",
    "bulk": "`noop.map([(i,), ...])`: one EVALSHA per batch",
    "visible": "`app.results.get(id)` returns a finished record (spin)",
}


def worker_commands(processes: int) -> list[list[str]]:
    bin_ = os.path.join(os.path.dirname(sys.executable), "sleipnir")
    return [[bin_, "worker", "peer_sleipnir:app", "-c", "8"]] * processes


def single(n: int, warmup: int) -> dict[str, Any]:
    return time_calls(noop.delay, n, warmup, paired_ping=redis_url("floor"))


def bulk(n: int, batch: int) -> dict[str, Any]:
    return time_batches(lambda ids: noop.map([(i,) for i in ids]), n, batch)


def fill(n: int) -> None:
    for start in range(0, n, 1000):
        noop.map([(i,) for i in range(start, min(n, start + 1000))])


def round_trip(n: int, warmup: int, cap_s: float) -> dict[str, Any]:
    results = app.results

    def visible(h: Any) -> bool:
        rec = results.get(h.id)
        return rec is not None and rec.state.finished

    return time_round_trips(noop.delay, visible, n, warmup, cap_s)


def round_trip_api(n: int, warmup: int, cap_s: float) -> dict[str, Any]:
    """The same, waiting with the public ``job.result()`` (polls, first sleep 5 ms)."""

    def visible(h: Any) -> bool:
        h.result(timeout=30)
        return True

    return time_round_trips(noop.delay, visible, n, warmup, cap_s)


def queued(r: Any, n: int) -> int:
    return int(r.zcard(f"{PREFIX}:ready:default"))


def remaining(r: Any, n: int) -> int:
    return int(r.zcard(f"{PREFIX}:ready:default")) + int(r.zcard(f"{PREFIX}:lease:default"))


def results_stored(r: Any) -> int:
    return int(r.zcard(f"{PREFIX}:result-expiry"))
