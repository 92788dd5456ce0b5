"""Many connections opening a database file that does not exist yet, at the same moment.

This is what happens when a deployment starts its web app and several workers
together on a fresh machine (``make demo``). Every one of them must come up: the
busy timeout is there so that nobody sees "database is locked".

Worker processes hit this only now and then (their start-up times spread them
out), so the test races connections on threads of this process instead, released
together by a barrier, on a fresh file each round.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from sleipnir import App, SleipnirError

pytestmark = pytest.mark.integration

ROUNDS = 200
OPENERS = 6


def _open_together(db: Path) -> list[str]:
    """Open ``OPENERS`` brokers on ``db`` at once; the errors they raised."""
    barrier = threading.Barrier(OPENERS)
    errors: list[str] = []
    apps: list[App] = []
    lock = threading.Lock()

    def open_one() -> None:
        app = App(broker=f"sqlite://{db}")
        barrier.wait(10)
        try:
            app.broker.stats()
        except SleipnirError as exc:
            with lock:
                errors.append(str(exc))
        with lock:
            apps.append(app)

    threads = [threading.Thread(target=open_one) for _ in range(OPENERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for app in apps:
        app.close()
    assert not any(t.is_alive() for t in threads)
    return errors


def test_connections_opening_a_fresh_database_at_once_all_succeed(tmp_path: Path) -> None:
    errors = []
    for n in range(ROUNDS):
        errors += _open_together(tmp_path / f"fresh-{n}.db")
    assert errors == [], (
        f"{len(errors)} of {ROUNDS * OPENERS} opens of a fresh database failed, e.g. {errors[0]}"
    )
