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
    assert "(the job has crashed 1 process of its own, after its lease ran out 1 time" in (
        letter.reason
    )


ALONE_WORKER = """
import os
import signal
from pathlib import Path

from sleipnir import App, Worker

LEDGER = Path(__file__).resolve().parent / "ledger.txt"
app = App.from_env()  # built here, in __main__: the worker cannot start job processes


def note(token):
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{token} {os.getpid()}\\n".encode())
    finally:
        os.close(fd)


@app.task(retries=0)
def crash(token):
    note(token)
    os.kill(os.getpid(), signal.SIGKILL)


@app.task(retries=0)
def record(token):
    note(token)
    return token


Worker(app, burst=True, concurrency=2, prefetch=2, lease=0.5, heartbeat=None).run()
"""


def test_without_job_processes_a_job_that_kills_its_worker_runs_alone_until_it_is_dead(
    sandbox: Sandbox,
) -> None:
    """A worker that cannot start processes of its own (its app is built in ``__main__``)
    runs a job back from a lost lease alone. The jobs held beside the first crash are
    charged nothing (retries=0, yet they succeed), and the crasher is dead after its
    worker died ``MAX_CRASHES`` times while it ran alone."""
    from sleipnir.worker import MAX_CRASHES

    jobs = sandbox.jobs()
    job = jobs.crash.delay("poison")
    others = [jobs.record.delay(f"fine-{i}") for i in range(3)]
    codes: list[int] = []
    for n in range(1, 2 * MAX_CRASHES + 3):
        wait_until(lambda: _ready(sandbox, job.id), 10, f"the job never came back for run {n}")
        w = sandbox.python(f"alone-{n}", ALONE_WORKER)
        codes.append(w.wait_exit(20))
        if codes[-1] == 0:
            break
    assert codes == [-signal.SIGKILL] * (1 + MAX_CRASHES) + [0], [w.output()]
    assert sandbox.runs()["poison"] == 1 + MAX_CRASHES
    assert "runs alone in this worker" in (sandbox.dir / "alone-2.err").read_text()
    for other in others:  # retries=0: one charged try would have left them dead
        assert other.status() == "succeeded", other.record()
    assert all(1 <= sandbox.runs()[f"fine-{i}"] <= 2 for i in range(3)), sandbox.runs()
    (letter,) = sandbox.app.broker.dead_letters()
    assert letter.id == job.id
    assert f"its worker died {MAX_CRASHES} times while the job ran apart" in letter.reason
