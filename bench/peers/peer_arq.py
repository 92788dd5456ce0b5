"""arq on the benchmark's Redis: worker settings and producer side (asyncio)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import redis
from arq import create_pool
from arq.connections import RedisSettings
from common import latency_summary, redis_url

REDIS = RedisSettings.from_dsn(redis_url("arq"))


async def noop(ctx: dict[str, Any], i: int) -> int:
    return i


class WorkerSettings:
    functions = [noop]  # noqa: RUF012
    redis_settings = REDIS
    # max_jobs=10, poll_delay=0.5 s, keep_result=3600 s: the defaults


NAME = "arq"
SETTINGS = {
    "one": "`arq peer_arq.WorkerSettings`: 1 process, asyncio, max_jobs 10, "
    "poll_delay 0.5 s (defaults)",
    "two": "2 x `arq peer_arq.WorkerSettings`",
    "round_trip": "`arq peer_arq.WorkerSettings` (idle: polls the queue every 0.5 s)",
    "acks": "job stays in the queue until done, guarded by an in-progress key (at least once)",
    "results": "stored by default (keep_result 3600 s)",
    "enqueue": "`await pool.enqueue_job('noop', i)`",
    "bulk": "n/a: no bulk enqueue",
    "visible": "`await job.result_info()` is not None (spin)",
}


def worker_commands(processes: int) -> list[list[str]]:
    bin_ = os.path.join(os.path.dirname(sys.executable), "arq")
    cmd = [bin_, "peer_arq.WorkerSettings"]
    return [cmd] * processes


async def _single(n: int, warmup: int) -> dict[str, Any]:
    """As common.time_calls, on the event loop, with a paired (blocking) redis-py PING."""
    ping = redis.Redis.from_url(redis_url("floor")).ping
    pool = await create_pool(REDIS)
    for i in range(warmup):
        await pool.enqueue_job("noop", i)
        ping()
    samples = [0] * n
    pings = [0] * n
    for i in range(n):
        t0 = time.perf_counter_ns()
        ping()
        pings[i] = time.perf_counter_ns() - t0
        t0 = time.perf_counter_ns()
        await pool.enqueue_job("noop", i)
        samples[i] = time.perf_counter_ns() - t0
    await pool.aclose()
    out = latency_summary(samples, sum(samples) / 1e9)
    out["paired_ping"] = latency_summary(pings)
    return out


def single(n: int, warmup: int) -> dict[str, Any]:
    return asyncio.run(_single(n, warmup))


bulk = None


async def _fill(n: int) -> None:
    pool = await create_pool(REDIS)
    for i in range(n):
        await pool.enqueue_job("noop", i)
    await pool.aclose()


def fill(n: int) -> None:
    asyncio.run(_fill(n))


async def _round_trip(n: int, warmup: int, cap_s: float) -> dict[str, Any]:
    pool = await create_pool(REDIS)

    async def one(i: int) -> int:
        t0 = time.perf_counter_ns()
        job = await pool.enqueue_job("noop", i)
        assert job is not None
        while await job.result_info() is None:
            if time.perf_counter_ns() - t0 > 30e9:
                raise RuntimeError(f"round-trip job {i} never finished")
        return time.perf_counter_ns() - t0

    for i in range(warmup):
        await one(i)
    samples = []
    stop_at = time.monotonic() + cap_s
    for i in range(n):
        samples.append(await one(i))
        if time.monotonic() > stop_at:
            break
    await pool.aclose()
    out = latency_summary(samples)
    out["capped"] = len(samples) < n
    return out


def round_trip(n: int, warmup: int, cap_s: float) -> dict[str, Any]:
    return asyncio.run(_round_trip(n, warmup, cap_s))


def queued(r: Any, n: int) -> int:
    return int(r.zcard("arq:queue"))


def remaining(r: Any, n: int) -> int:
    # a job stays in arq:queue until it finished
    return int(r.zcard("arq:queue"))


def results_stored(r: Any) -> int:
    return sum(1 for _ in r.scan_iter("arq:result:*", count=5000))
