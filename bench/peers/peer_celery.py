"""Celery on the benchmark's Redis (broker and result backend): task module and producer side."""

from __future__ import annotations

import os
import sys
from typing import Any

from celery import Celery
from common import redis_url, time_calls, time_round_trips

app = Celery("peer_celery", broker=redis_url("celery"), backend=redis_url("celery"))
app.conf.update(
    task_acks_late=True,  # ack after the task ran (the default acks before it runs)
    worker_prefetch_multiplier=4,  # the default, stated
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task
def noop(i: int) -> int:
    return i


NAME = "Celery"
SETTINGS = {
    "one": "`celery -A peer_celery worker -P prefork -c 1`: 1 pool process (plus the parent "
    "that consumes), prefetch multiplier 4 (default)",
    "two": "`celery -A peer_celery worker -P prefork -c 2` (the default -c on this 2-CPU "
    "machine); mingle, gossip and heartbeat left on (defaults)",
    "round_trip": "`celery -A peer_celery worker -P prefork -c 1`",
    "acks": "`task_acks_late=True`: acked after the task ran (default would ack before)",
    "results": "Redis result backend (pub/sub + SET per result, 1-day expiry)",
    "enqueue": "`noop.delay(i)`",
    "bulk": "n/a: `group()` publishes one message per task",
    "visible": "`AsyncResult.ready()` (spin)",
}


def worker_commands(processes: int) -> list[list[str]]:
    bin_ = os.path.join(os.path.dirname(sys.executable), "celery")
    return [
        [
            bin_,
            "-A",
            "peer_celery",
            "worker",
            "-P",
            "prefork",
            "-c",
            str(processes),
            "-l",
            "WARNING",
        ]
    ]


# Every AsyncResult is kept until the end: one collected while the producer subscribes
# to the next result deadlocks in AsyncResult.__del__ (PubSub.unsubscribe inside
# PubSub.subscribe), which hung a round-trip run.
_kept: list[Any] = []


def _delay(i: int) -> Any:
    h = noop.delay(i)
    _kept.append(h)
    return h


def single(n: int, warmup: int) -> dict[str, Any]:
    return time_calls(_delay, n, warmup, paired_ping=redis_url("floor"))


bulk = None


def fill(n: int) -> None:
    for i in range(n):
        _delay(i)


def round_trip(n: int, warmup: int, cap_s: float) -> dict[str, Any]:
    return time_round_trips(_delay, lambda h: h.ready(), n, warmup, cap_s)


def queued(r: Any, n: int) -> int:
    return int(r.llen("celery"))


def remaining(r: Any, n: int) -> int:
    # acks_late: a delivered message sits in the "unacked" hash until the task ran
    return int(r.llen("celery")) + int(r.hlen("unacked"))


def results_stored(r: Any) -> int:
    return sum(1 for _ in r.scan_iter("celery-task-meta-*", count=5000))
