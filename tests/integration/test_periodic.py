"""Periodic jobs with real worker processes: three workers, each tick runs once."""

from __future__ import annotations

from collections import Counter

import pytest

from .conftest import SLEIPNIR, Sandbox, wait_until

pytestmark = pytest.mark.integration

PERIODIC_MODULE = """
import os
import time
from pathlib import Path

from sleipnir import App

LEDGER = Path(__file__).resolve().parent / "ticks.txt"
app = App.from_env()


@app.periodic(every=1.0)
def tick():
    fd = os.open(LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{time.time()!r} {os.getpid()}\\n".encode())
    finally:
        os.close(fd)
"""


def test_three_workers_fire_each_tick_of_a_one_second_schedule_once(sandbox: Sandbox) -> None:
    (sandbox.dir / "periodic_jobs.py").write_text(PERIODIC_MODULE)
    ledger = sandbox.dir / "ticks.txt"
    workers = [
        sandbox.spawn(f"w{i}", [str(SLEIPNIR), "worker", "periodic_jobs:app", "-c", "2"])
        for i in range(3)
    ]

    def runs() -> list[tuple[float, int]]:
        if not ledger.exists():
            return []
        return [
            (float(t), int(p))
            for t, p in (ln.split() for ln in ledger.read_text().split("\n") if ln)
        ]

    def enough() -> bool:
        for w in workers:
            w.assert_running()
        return len(runs()) >= 5

    wait_until(enough, 30.0, lambda: "\n".join(w.output()[-2000:] for w in workers))
    for w in workers:
        w.kill()
    # Each scheduler logs the ticks it enqueued: no tick may be enqueued by two of them.
    enqueued = Counter(
        line.split("periodic tick: tick ", 1)[1].split(" enqueued", 1)[0]
        for w in workers
        for line in w.stderr().splitlines()
        if "periodic tick: tick " in line and " enqueued as " in line
    )
    assert len(enqueued) >= 5, enqueued
    assert max(enqueued.values()) == 1, f"ticks enqueued twice: {enqueued}"
    assert len(runs()) <= len(enqueued)
    assert all("periodic: tick (every 1s)" in w.stderr() for w in workers)
