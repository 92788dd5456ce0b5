"""Helpers shared by bench/peers/run.py and the per-system modules (``peer_*.py``).

Where each system keeps its keys on the shared Redis (``BENCH_REDIS``, host:port,
default 127.0.0.1:6379). The peers' keys cannot be told apart from other keys by a
prefix of ours, so each peer gets a database number of its own, which run.py checks
is empty before it starts and empties (key by key, never FLUSHDB) after each step.
Sleipnir and the floor share database 9 under prefixes of their own, and only keys
under those prefixes are ever deleted there.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

DB = {
    "floor": 9,
    "sleipnir": 9,
    "celery": 10,
    "rq": 11,
    "dramatiq": 12,
    "huey": 13,
    "arq": 14,
}
# The key patterns each system may own in its database; ``*`` where the whole database is its.
OWNED = {
    "floor": "benchpeers-floor:*",
    "sleipnir": "benchpeers:*",
    "celery": "*",
    "rq": "*",
    "dramatiq": "*",
    "huey": "*",
    "arq": "*",
}
SLEIPNIR_PREFIX = "benchpeers"
FLOOR_PREFIX = "benchpeers-floor"


def redis_address() -> str:
    return os.environ.get("BENCH_REDIS", "127.0.0.1:6379")


def redis_url(system: str) -> str:
    """The URL of ``system``'s database on the benchmark's Redis."""
    return f"redis://{redis_address()}/{DB[system]}"


def percentile(sorted_values: list[int] | list[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return math.nan
    rank = min(len(sorted_values), max(1, math.ceil(q / 100 * len(sorted_values))))
    return float(sorted_values[rank - 1])


def latency_summary(samples_ns: list[int], wall_s: float | None = None) -> dict[str, Any]:
    """p50/p90/p99/mean/max in microseconds, and the call rate if ``wall_s`` is given."""
    s = sorted(samples_ns)
    out: dict[str, Any] = {
        "n": len(s),
        "p50_us": percentile(s, 50) / 1000,
        "p90_us": percentile(s, 90) / 1000,
        "p99_us": percentile(s, 99) / 1000,
        "mean_us": statistics.fmean(s) / 1000 if s else math.nan,
        "max_us": s[-1] / 1000 if s else math.nan,
    }
    if wall_s is not None:
        out["jobs_per_s"] = len(s) / wall_s
    return out


def time_calls(
    call: Callable[[int], Any], n: int, warmup: int, paired_ping: str | None = None
) -> dict[str, Any]:
    """Call ``call(i)`` ``warmup`` times, then ``n`` times each timed with perf_counter_ns.

    With ``paired_ping`` (a Redis URL), each timed call is preceded by a timed PING on
    a plain redis-py client of the same server, so the call and the floor are measured
    side by side under the same conditions (the result's ``paired_ping``). The rate
    (``jobs_per_s``) counts the calls' own time only.
    """
    ping: Callable[[], Any] | None = None
    if paired_ping:
        import redis

        ping = redis.Redis.from_url(paired_ping).ping
    for i in range(warmup):
        call(i)
        if ping:
            ping()
    samples = [0] * n
    pings = [0] * n
    for i in range(n):
        if ping:
            t0 = time.perf_counter_ns()
            ping()
            pings[i] = time.perf_counter_ns() - t0
        t0 = time.perf_counter_ns()
        call(i)
        samples[i] = time.perf_counter_ns() - t0
    out = latency_summary(samples, sum(samples) / 1e9)
    if ping:
        out["paired_ping"] = latency_summary(pings)
    return out


# Pause between round trips, untimed, so the worker is back in its idle wait when the
# next job comes (the measurement is of an idle worker, not of a busy one).
ROUND_TRIP_GAP_S = 0.002


def time_round_trips(
    enqueue: Callable[[int], Any],
    visible: Callable[[Any], bool],
    n: int,
    warmup: int,
    cap_s: float,
    give_up_s: float = 30.0,
) -> dict[str, Any]:
    """Sequential round trips: enqueue one job, spin on ``visible(handle)`` until its result shows.

    Stops after ``n`` timed jobs or ``cap_s`` seconds, whichever comes first.
    """
    for i in range(warmup):
        h = enqueue(i + 1)
        deadline = time.monotonic() + give_up_s
        while not visible(h):
            if time.monotonic() > deadline:
                raise RuntimeError(f"warm-up job {i} never finished")
    samples: list[int] = []
    stop_at = time.monotonic() + cap_s
    for i in range(n):
        time.sleep(ROUND_TRIP_GAP_S)
        t0 = time.perf_counter_ns()
        h = enqueue(i + 1)
        while not visible(h):
            if time.perf_counter_ns() - t0 > give_up_s * 1e9:
                raise RuntimeError(f"round-trip job {i} never finished")
        samples.append(time.perf_counter_ns() - t0)
        if time.monotonic() > stop_at:
            break
    out = latency_summary(samples)
    out["capped"] = len(samples) < n
    return out


def time_batches(enqueue_batch: Callable[[list[int]], Any], n: int, batch: int) -> dict[str, Any]:
    """Enqueue ``n`` jobs in batches (after one warm-up batch); the rate and batch times."""
    enqueue_batch(list(range(batch)))
    durations = []
    began = time.perf_counter()
    for start in range(0, n, batch):
        ids = list(range(start, min(n, start + batch)))
        t0 = time.perf_counter()
        enqueue_batch(ids)
        durations.append(time.perf_counter() - t0)
    wall = time.perf_counter() - began
    return {
        "jobs": n,
        "batch": batch,
        "seconds": wall,
        "jobs_per_s": n / wall,
        "batch_p50_ms": statistics.median(durations) * 1000,
    }
