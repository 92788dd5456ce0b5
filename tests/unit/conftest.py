from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from sleipnir import App, Worker
from sleipnir.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app(clock: FakeClock) -> Iterator[App]:
    app = App(broker="memory://", clock=clock)
    yield app
    app.close()


def drain(app: App) -> Worker:
    """Run a burst worker in this thread until nothing is ready; return it for its stats."""
    worker = Worker(app, burst=True, concurrency=2, rng=random.Random(0))
    worker.run()
    return worker
