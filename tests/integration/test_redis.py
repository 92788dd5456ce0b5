"""Redis only, with real processes: durability, many workers, outages, server settings.

What every broker must do (kill -9 of a worker with jobs in flight, leases, SIGTERM)
runs on Redis too, through the parametrized ``sandbox``; this file holds what only
a Redis deployment has. Tests that kill or reconfigure Redis run their own
``redis-server`` (``redis_servers``), never the shared one.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sleipnir import App, BrokerConnectionError, JobState

from .conftest import (
    REDIS_HOST,
    REDIS_PORT,
    RedisServer,
    Sandbox,
    free_port,
    open_sandbox,
    redis_py,
    wait_until,
)

pytestmark = pytest.mark.integration

Servers = Callable[..., RedisServer]


def _unfinished(box: Sandbox, ids: list[str]) -> list[str]:
    """The ids among ``ids`` whose stored outcome is not a success (yet)."""
    out = []
    for job_id in ids:
        record = box.app.results.get(job_id)
        if record is None or record.state is not JobState.SUCCEEDED:
            out.append(job_id)
    return out


def _wait_succeeded(box: Sandbox, ids: list[str], timeout: float, *procs: Any) -> None:
    left = list(ids)

    def done() -> bool:
        for p in procs:
            p.assert_running()
        left[:] = _unfinished(box, left)
        return not left

    wait_until(
        done,
        timeout,
        lambda: (
            f"{len(left)} of {len(ids)} jobs not succeeded\n"
            + "\n".join(p.output()[-4000:] for p in procs)
        ),
        interval=0.05,
    )


def _durability_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "durability:" in line]


# -- durability ------------------------------------------------------------------------


def test_1000_jobs_accepted_with_aof_always_survive_a_kill_9_of_redis(
    redis_servers: Servers, tmp_path: Path
) -> None:
    server = redis_servers()  # appendonly yes, appendfsync always
    with open_sandbox(tmp_path / "box", server.url(), "redis") as box:
        jobs = box.jobs()
        handles = []
        for b in range(3):
            handles += jobs.record.map([(f"a{b}-{i}",) for i in range(300)])
        handles.append(jobs.record.delay("single"))
        handles += jobs.record.map([(f"z{i}",) for i in range(99)])
        assert len({h.id for h in handles}) == 1000

        server.kill()  # no shutdown: only what reached the AOF is there
        assert not server.ping()
        server.start()  # same port and directory: it replays the AOF

        (stats,) = box.app.broker.stats()
        assert (stats.queue, stats.ready, stats.scheduled, stats.running, stats.dead) == (
            "default",
            1000,
            0,
            0,
            0,
        ), server.log()

        w = box.worker("burst", "--burst", "-c", "8")
        assert w.wait_exit(60) == 0, w.output()
        assert _unfinished(box, [h.id for h in handles]) == []
        assert all(box.app.results.get(h.id).attempt == 1 for h in handles)
        runs = box.runs()
        assert len(runs) == 1000
        assert set(runs.values()) == {1}
        assert "Traceback" not in w.stderr(), w.output()
        assert _durability_lines(w.stderr()) == [], w.output()


# -- many workers ----------------------------------------------------------------------


def test_four_workers_on_one_queue_run_each_of_2000_jobs_exactly_once(
    redis_sandbox: Sandbox,
) -> None:
    box = redis_sandbox
    workers = [box.worker(f"worker-{n}", "-c", "4") for n in range(4)]
    for w in workers:  # all idle and waiting before the first job arrives
        box.wait_logged(w, "concurrency 4", 20)

    jobs = box.jobs()
    ids: list[str] = []
    for b in range(20):  # batches land while the workers are busy with the earlier ones
        ids += [h.id for h in jobs.record.map([(f"c{b}-{i}",) for i in range(100)])]
    assert len(set(ids)) == 2000

    def all_ran() -> bool:
        for w in workers:
            w.assert_running()
        return len(box.ledger_lines()) >= 2000

    wait_until(
        all_ran,
        60,
        lambda: (
            f"{len(box.ledger_lines())} of 2000 jobs ran\n"
            + "\n".join(w.output()[-3000:] for w in workers)
        ),
    )
    _wait_succeeded(box, ids, 30, *workers)
    for w in workers:
        w.send(signal.SIGTERM)
    for w in workers:
        assert w.wait_exit(20) == 0, w.output()

    # No worker died and no lease ran out: at least once must have been exactly once.
    runs = box.runs()
    assert len(runs) == 2000
    assert [t for t, n in runs.items() if n != 1] == []
    assert all(box.app.results.get(i).attempt == 1 for i in ids)
    pids = {pid for _, pid in box.ledger_lines()}
    assert pids <= {w.pid for w in workers}
    assert len(pids) >= 2, "one worker ran everything: the test did not test contention"
    for w in workers:
        text = w.stderr()
        assert "Traceback" not in text, text
        assert "lease lost" not in text and "was lost" not in text, text
        assert "failed, retrying" not in text and "will retry" not in text, text
    (stats,) = box.app.broker.stats()
    assert (stats.ready, stats.scheduled, stats.running, stats.dead) == (0, 0, 0, 0)


# -- losing the connection -------------------------------------------------------------


def test_a_worker_rides_out_redis_restarts_and_runs_the_jobs_enqueued_after_them(
    redis_servers: Servers, tmp_path: Path
) -> None:
    server = redis_servers()
    with open_sandbox(tmp_path / "box", server.url(), "redis") as box:
        w = box.worker("worker", "-c", "4", "--lease", "10")
        box.wait_logged(w, "concurrency 4", 20)
        jobs = box.jobs()

        # 1. Redis dies while jobs run; they finish during the outage, so their
        #    outcomes cannot be settled until it is back.
        before = [h.id for h in jobs.block.map([(f"before-{i}",) for i in range(8)])]
        wait_until(lambda: len(box.ledger_lines()) >= 4, 20, w.output)
        server.kill()
        box.release()
        box.wait_logged(w, "retrying until it answers", 15)  # the outage, logged once
        server.start()
        _wait_succeeded(box, before, 20, w)

        # 2. Redis dies while the worker is idle, waiting for work.
        seen = w.stderr().count("unreachable")
        server.kill()

        def noticed() -> bool:
            w.assert_running()
            return w.stderr().count("unreachable") > seen

        wait_until(
            noticed,
            15,
            lambda: f"the worker never noticed the second outage\n{w.output()}",
        )
        server.start()
        after = [h.id for h in jobs.record.map([(f"after-{i}",) for i in range(200)])]
        after.append(jobs.record.delay("after-single").id)
        _wait_succeeded(box, after, 30, w)

        w.assert_running()
        w.send(signal.SIGTERM)
        assert w.wait_exit(15) == 0, w.output()
        log = w.stderr()
        assert "Traceback" not in log, log
        assert "WARNING" in log and "unreachable" in log, log
        assert "reserve failed, retrying" in log, log
        runs = box.runs()
        assert runs == {
            **{f"before-{i}": 1 for i in range(8)},
            **{f"after-{i}": 1 for i in range(200)},
            "after-single": 1,
        }
        assert server.starts == 3


def test_a_producer_gets_broker_connection_error_at_once_when_nothing_listens() -> None:
    redis_py()  # skips (or fails under CI) without the client library
    port = free_port()
    app = App(broker=f"redis://127.0.0.1:{port}/0?prefix=nobody")

    @app.task  # type: ignore[untyped-decorator]
    def noop() -> None:
        """Never runs."""

    outcome: dict[str, Any] = {}

    def produce() -> None:
        started = time.monotonic()
        try:
            noop.delay()
        except BaseException as exc:  # checked below, in the test's thread
            outcome["error"] = exc
        outcome["took"] = time.monotonic() - started

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    thread.join(15)
    try:
        assert not thread.is_alive(), "delay() still hanging after 15 s"
        error = outcome.get("error")
        assert isinstance(error, BrokerConnectionError), repr(error)
        assert outcome["took"] < 5.0, f"took {outcome['took']:.2f} s to fail"
        assert f"127.0.0.1:{port}" in str(error)
    finally:
        app.close()


# -- the server's settings -------------------------------------------------------------


def test_the_worker_warns_that_the_shared_server_runs_without_aof(
    redis_sandbox: Sandbox,
) -> None:
    client = redis_py().Redis(host=REDIS_HOST, port=REDIS_PORT, decode_responses=True)
    try:
        appendonly = client.config_get("appendonly").get("appendonly")
    finally:
        client.close()
    if appendonly != "no":
        pytest.skip(f"the shared Redis runs with appendonly {appendonly!r} now")

    w = redis_sandbox.worker("burst", "--burst")
    assert w.wait_exit(20) == 0, w.output()
    lines = _durability_lines(w.stderr())
    assert any("WARNING" in line and "appendonly" in line for line in lines), w.output()


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (("--maxmemory-policy", "noeviction"), []),
        (
            ("--maxmemory-policy", "volatile-lru"),
            ["maxmemory-policy is 'volatile-lru'", "stored results", "noeviction"],
        ),
        (
            ("--maxmemory-policy", "allkeys-lru"),
            ["maxmemory-policy is 'allkeys-lru'", "jobs and their leases", "noeviction"],
        ),
        (("--appendfsync", "everysec"), ["appendfsync is 'everysec'"]),
    ],
    ids=["safe", "volatile-lru", "allkeys-lru", "everysec"],
)
def test_durability_warnings_follow_the_private_servers_settings(
    redis_servers: Servers, tmp_path: Path, settings: tuple[str, ...], expected: list[str]
) -> None:
    server = redis_servers(*settings)  # on top of appendonly yes, appendfsync always
    with open_sandbox(tmp_path / "box", server.url(), "redis") as box:
        w = box.worker("burst", "--burst")
        assert w.wait_exit(20) == 0, w.output()
        lines = _durability_lines(w.stderr())
        if not expected:
            assert lines == [], w.output()
        else:
            assert len(lines) == 1, w.output()
            assert "WARNING" in lines[0]
            for text in expected:
                assert text in lines[0], w.output()
            assert "appendonly" not in lines[0]
