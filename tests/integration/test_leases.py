"""Leases between real processes: a frozen worker loses its job, a poison job is stopped."""

from __future__ import annotations

import signal

import pytest

from sleipnir.brokers.base import BrokerJobState

from .conftest import Sandbox, wait_until

pytestmark = pytest.mark.integration


def _ready(box: Sandbox, job_id: str) -> bool:
    info = box.app.broker.job_info(job_id)
    return info is not None and info.state is BrokerJobState.READY


def test_a_worker_that_lost_its_lease_does_not_overwrite_the_new_owners_outcome(
    sandbox: Sandbox,
) -> None:
    """Worker A freezes (SIGSTOP) past its lease, B takes the job over and succeeds.

    A then wakes, learns at its next renewal that the lease is lost, and its own run
    finishes (with an error). The job was acked by B, so its stored outcome must stay
    B's success: "a job that was acknowledged always has its outcome stored".
    """
    jobs = sandbox.jobs()
    job = jobs.block.delay("contested", fail_first=True)
    a = sandbox.worker("worker-a", "-c", "1", "--prefetch", "0", "--lease", "1")
    wait_until(lambda: sandbox.ledger_lines() == [("contested", a.pid)], 20, a.output)

    a.send(signal.SIGSTOP)
    try:
        wait_until(lambda: _ready(sandbox, job.id), 10, "A's lease never ran out")
        b = sandbox.worker("worker-b", "-c", "1", "--prefetch", "0", "--lease", "5")
        wait_until(lambda: sandbox.runs()["contested"] == 2, 20, b.output)
        assert sandbox.ledger_lines()[1] == ("contested", b.pid)
    finally:
        a.send(signal.SIGCONT)
    sandbox.wait_logged(a, "was lost", 10)

    sandbox.release(b)  # B's run (the second) succeeds, is stored and acked
    wait_until(lambda: job.status() == "succeeded", 10, b.output)
    assert job.record().attempt == 2
    assert sandbox.app.broker.job_info(job.id) is None

    sandbox.release(a)  # A's stale run (the first) fails; its nack must be refused
    sandbox.wait_logged(a, "lease lost before settling", 10)
    for w in (a, b):
        w.send(signal.SIGTERM)
    for w in (a, b):
        assert w.wait_exit(15) == 0, w.output()

    record = job.record()
    assert record is not None
    assert (job.status(), record.attempt, record.error) == ("succeeded", 2, None), (
        f"A's stale outcome replaced B's: {record}"
    )
    assert sandbox.runs() == {"contested": 2}


def test_a_job_that_kills_its_worker_runs_apart_and_goes_to_the_dead_letters(
    sandbox: Sandbox,
) -> None:
    """``crash`` SIGKILLs the process running it. The first time that is its worker; the
    delivery after the lost lease runs in a process of its own, whose death is the job's
    failure (retries=0: dead at once), and the worker carries on."""
    jobs = sandbox.jobs()
    job = jobs.crash.delay("poison")
    codes = []
    for n in range(1, 4):
        wait_until(lambda: _ready(sandbox, job.id), 10, f"the job never came back for run {n}")
        w = sandbox.worker(f"burst-{n}", "--burst", "-c", "1", "--lease", "0.5")
        codes.append(w.wait_exit(20))
        if codes[-1] == 0:
            break
    assert codes == [-signal.SIGKILL, 0], [w.output()]
    assert sandbox.runs() == {"poison": 2}
    assert "runs in a process of its own" in w.output()

    assert job.status() == "failed"
    info = sandbox.app.broker.job_info(job.id)
    assert info is not None
    assert info.state is BrokerJobState.DEAD
    assert info.attempt == 2
    (letter,) = sandbox.app.broker.dead_letters()
    assert letter.id == job.id
    assert "Crashed: the job's process was killed by SIGKILL" in letter.reason
    assert "(attempt 1 of 1, no retries left)" in letter.reason
