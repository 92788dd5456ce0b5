"""Worker processes that die or are stopped with jobs in flight lose none of them."""

from __future__ import annotations

import signal
import time

import pytest

from sleipnir.brokers.base import BrokerJobState

from .conftest import Sandbox, wait_until

pytestmark = pytest.mark.integration


def _ready_again(box: Sandbox, ids: list[str]) -> bool:
    """True once every job is reservable again (its lease ran out or it was given back)."""
    infos = [box.app.broker.job_info(i) for i in ids]
    return all(info is not None and info.state is BrokerJobState.READY for info in infos)


def test_kill_9_with_jobs_in_flight_runs_them_again_elsewhere(sandbox: Sandbox) -> None:
    jobs = sandbox.jobs()
    handles = jobs.block.map([(f"k{i}",) for i in range(40)])
    token_of = {h.id: f"k{i}" for i, h in enumerate(handles)}

    # No prefetch: A holds exactly the jobs it started, so exactly those come back.
    a = sandbox.worker("worker-a", "-c", "4", "--prefetch", "0", "--lease", "1.0")
    started = wait_until(
        lambda: (
            {t for t, pid in sandbox.ledger_lines() if pid == a.pid}
            if len(sandbox.ledger_lines()) >= 4
            else None
        ),
        20,
        lambda: f"worker A never started 4 jobs\n{a.output()}",
    )
    assert len(started) == 4
    held = {i for i in token_of if sandbox.app.broker.job_info(i).state is BrokerJobState.RESERVED}
    assert {token_of[i] for i in held} == started

    a.send(signal.SIGKILL)
    assert a.wait_exit(5) == -signal.SIGKILL
    sandbox.release()
    # B in burst mode stops once nothing is ready, so let A's leases run out first.
    wait_until(lambda: _ready_again(sandbox, sorted(held)), 10, "A's leases never ran out")

    b = sandbox.worker("worker-b", "-c", "4", "--burst", "--lease", "5")
    assert b.wait_exit(30) == 0, b.output()

    for job_id, token in token_of.items():
        assert sandbox.app.status(job_id) == "succeeded", (token, b.output())
        record = sandbox.app.results.get(job_id)
        assert record is not None
        assert record.attempt == (2 if token in started else 1), token
    runs = sandbox.runs()
    assert runs == {t: 2 if t in started else 1 for t in token_of.values()}
    assert {pid for _, pid in sandbox.ledger_lines()} == {a.pid, b.pid}


def test_sigterm_lets_the_running_job_finish_and_gives_back_the_prefetched_one(
    sandbox: Sandbox,
) -> None:
    jobs = sandbox.jobs()
    first = jobs.block.delay("first")
    second = jobs.block.delay("second")

    w = sandbox.worker("worker", "-c", "1", "--prefetch", "1", "--lease", "2")
    wait_until(lambda: sandbox.runs()["first"] == 1, 20, lambda: w.output())
    wait_until(
        lambda: sandbox.app.broker.job_info(second.id).state is BrokerJobState.RESERVED,
        10,
        lambda: f"the second job was never prefetched\n{w.output()}",
    )

    w.send(signal.SIGTERM)
    sandbox.wait_logged(w, "SIGTERM: stopping", 10)
    # The prefetched job goes back before the running one finishes.
    wait_until(
        lambda: _ready_again(sandbox, [second.id]),
        10,
        lambda: f"the prefetched job was not given back\n{w.output()}",
    )
    assert w.popen.poll() is None, "the worker quit without waiting for its running job"
    sandbox.release()

    assert w.wait_exit(15) == 0, w.output()
    assert first.status() == "succeeded"
    assert first.record().attempt == 1
    assert second.status() == "queued"
    info = sandbox.app.broker.job_info(second.id)
    assert info is not None
    assert info.attempt == 0
    assert info.last_error is None
    assert sandbox.runs() == {"first": 1}


def test_sigterm_past_the_stop_timeout_puts_the_job_back(sandbox: Sandbox) -> None:
    jobs = sandbox.jobs()
    job = jobs.block.delay("slow")
    w = sandbox.worker("worker", "-c", "1", "--lease", "2", "--stop-timeout", "1")
    wait_until(lambda: sandbox.runs()["slow"] == 1, 20, lambda: w.output())

    stopped_at = time.monotonic()
    w.send(signal.SIGTERM)
    assert w.wait_exit(1 + 4) == 0, w.output()
    took = time.monotonic() - stopped_at
    assert took >= 0.9, f"exited after {took:.2f}s, before the stop timeout"
    assert "given back" in w.stderr()

    assert job.status() in ("retrying", "queued")
    info = sandbox.app.broker.job_info(job.id)
    assert info is not None
    assert info.state is BrokerJobState.READY
    assert info.attempt == 1

    sandbox.release()
    b = sandbox.worker("burst", "--burst", "-c", "1")
    assert b.wait_exit(20) == 0, b.output()
    assert job.status() == "succeeded"
    assert job.record().attempt == 2
    assert sandbox.runs() == {"slow": 2}


def test_second_sigterm_quits_at_once_and_the_lease_brings_the_job_back(
    sandbox: Sandbox,
) -> None:
    jobs = sandbox.jobs()
    job = jobs.block.delay("stuck")
    w = sandbox.worker("worker", "-c", "1", "--lease", "1", "--stop-timeout", "60")
    wait_until(lambda: sandbox.runs()["stuck"] == 1, 20, lambda: w.output())

    w.send(signal.SIGTERM)
    sandbox.wait_logged(w, "SIGTERM: stopping", 10)
    assert w.popen.poll() is None, "the first SIGTERM must wait for the running job"
    second_at = time.monotonic()
    w.send(signal.SIGTERM)
    w.wait_exit(3)  # any exit code will do; "at once" is what counts
    assert time.monotonic() - second_at < 3

    assert sandbox.app.results.get(job.id) is None, "nothing was settled on the way out"
    assert job.status() in ("running", "queued")
    wait_until(lambda: _ready_again(sandbox, [job.id]), 10, "the lease never ran out")

    sandbox.release()
    b = sandbox.worker("burst", "--burst", "-c", "1")
    assert b.wait_exit(20) == 0, b.output()
    assert job.status() == "succeeded"
    assert job.record().attempt == 2
    assert sandbox.runs() == {"stuck": 2}
