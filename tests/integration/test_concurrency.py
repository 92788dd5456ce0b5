"""Many processes on one broker at once; producers killed mid-stream."""

from __future__ import annotations

import signal

import pytest

from .conftest import Sandbox, parse_queues, wait_until

pytestmark = pytest.mark.integration

PRODUCER = """
import importlib
import sys

module, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
record = importlib.import_module(module).record
ids = []
for i in range(count):
    ids.append(record.delay(f"{name}-{i}").id)
    if i % 100 == 99:  # and now and then a bulk enqueue of 20
        ids += [h.id for h in record.map([(f"{name}-m{i}-{k}",) for k in range(20)])]
print("\\n".join(ids))
"""

ENDLESS_PRODUCER = """
import importlib
import sys

record = importlib.import_module(sys.argv[1]).record
for i in range(100_000):
    handle = record.delay(f"s{i}")
    print(handle.id, flush=True)
"""


def _tokens(name: str, count: int) -> set[str]:
    singles = {f"{name}-{i}" for i in range(count)}
    mapped = {f"{name}-m{i}-{k}" for i in range(99, count, 100) for k in range(20)}
    return singles | mapped


def test_four_producers_and_two_workers_share_one_broker(sandbox: Sandbox) -> None:
    workers = [sandbox.worker(f"worker-{n}", "-c", "4", "--lease", "10") for n in range(2)]
    for w in workers:  # both idle and waiting before the first job arrives
        sandbox.wait_logged(w, "concurrency 4", 20)

    count = 500
    producers = [
        sandbox.python(f"producer-{p}", PRODUCER, sandbox.module, f"p{p}", str(count))
        for p in range(4)
    ]
    for p in producers:
        assert p.wait_exit(60) == 0, p.output()
    ids = [i for p in producers for i in p.stdout().split()]
    expected = set().union(*(_tokens(f"p{p}", count) for p in range(4)))
    assert len(ids) == len(set(ids)) == len(expected) == 4 * (count + 100)

    def all_ran() -> bool:
        for w in workers:
            w.assert_running()
        return len(sandbox.ledger_lines()) >= len(expected)

    wait_until(
        all_ran,
        60,
        lambda: (
            f"{len(sandbox.ledger_lines())} of {len(expected)} jobs ran\n"
            + "\n".join(w.output()[-3000:] for w in workers)
        ),
    )
    # Every job finished (its outcome is stored before its ack), then the workers stop.
    wait_until(
        lambda: all(sandbox.app.status(i) == "succeeded" for i in ids),
        30,
        "not every job succeeded",
    )
    for w in workers:
        w.send(signal.SIGTERM)
    for w in workers:
        assert w.wait_exit(20) == 0, w.output()

    for proc in [*producers, *workers]:
        text = proc.output()
        assert "database is locked" not in text, text
        assert "Traceback" not in text, text
        assert "retrying" not in text, text  # reserve or settle failed on a busy file
        assert "lease" not in text.replace("lease 10.0s", ""), text
    # No worker crashed, so at-least-once must have been exactly once.
    runs = sandbox.runs()
    assert set(runs) == expected
    assert [t for t, n in runs.items() if n != 1] == []
    assert all(sandbox.app.results.get(i).attempt == 1 for i in ids)
    assert {pid for _, pid in sandbox.ledger_lines()} == {w.pid for w in workers}

    queues = sandbox.cli("queues", sandbox.spec)
    assert queues.returncode == 0, queues.stderr
    table = parse_queues(queues.stdout)
    assert table["default"] == {"ready": 0, "scheduled": 0, "running": 0, "failed": 0}


def test_jobs_enqueued_before_the_producer_is_killed_are_kept(sandbox: Sandbox) -> None:
    producer = sandbox.python("producer", ENDLESS_PRODUCER, sandbox.module, pipe_stdout=True)
    assert producer.reader is not None
    wait_until(
        lambda: len(producer.reader.snapshot()) >= 100,
        30,
        lambda: f"the producer printed too few ids\n{producer.output()}",
    )
    producer.send(signal.SIGKILL)
    assert producer.wait_exit(5) == -signal.SIGKILL
    printed = producer.reader.join(5)  # every id it printed, up to the kill
    assert len(printed) >= 100

    for job_id in printed:
        assert sandbox.app.broker.job_info(job_id) is not None, job_id

    w = sandbox.worker("burst", "--burst", "-c", "4")
    assert w.wait_exit(30) == 0, w.output()
    for job_id in printed:
        assert sandbox.app.status(job_id) == "succeeded", job_id
    runs = sandbox.runs()
    assert {f"s{i}" for i in range(len(printed))} <= set(runs)
    assert set(runs.values()) == {1}
