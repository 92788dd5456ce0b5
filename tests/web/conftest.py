"""A real uvicorn server on a free loopback port, and an httpx client for it.

Each test gets its own SQLite file and App; the server runs in a thread of the
test process and is stopped after the test.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import uvicorn

from sleipnir import App, Fail, Worker
from sleipnir.monitor import Heartbeat, RunningJob, TaskFigures, sample_of
from sleipnir.results import WorkerBeat
from sleipnir.testing import FakeClock
from sleipnir.web import create_app

TOKEN = "s3cret-token-for-tests"


def build_app(url: str) -> App:
    """An App with a few tasks: ``add``, ``refuse`` (fails for good), ``slow``."""
    app = App(broker=url)

    @app.task(retries=0)
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(retries=0, queue="mail")
    def refuse(why: str) -> None:
        raise Fail(why)

    @app.task
    def echo(value: Any = None) -> Any:
        return value

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def store_beat(
    app: App,
    worker_id: str = "host-b:7:abcdef",
    *,
    running: list[RunningJob] | None = None,
    tasks: list[TaskFigures] | None = None,
) -> Heartbeat:
    """Store a live heartbeat, as a worker that runs ``running`` now would send it."""
    now = app.clock.time()
    jobs = running or []
    beat = Heartbeat(
        worker_id=worker_id, host=worker_id.split(":", 1)[0], pid=7, ppid=1, queues=["default"],
        concurrency=4, busy=len(jobs), held=len(jobs), started_at=now - 600, at=now,
        running=jobs, tasks=tasks or [],
    )  # fmt: skip
    app.results.beat(
        WorkerBeat(
            worker_id=worker_id,
            at=now,
            expires_at=now + 15,
            body=msgspec.json.encode(beat),
            sample=msgspec.json.encode(sample_of(beat)),
        ),
        keep=3600,
    )
    return beat


@dataclass
class Server:
    """A running server: its App, base URL, and a client that sends the token."""

    app: App
    url: str
    client: httpx.Client
    token: str | None
    clients: list[httpx.Client] = field(default_factory=list)

    def anonymous(self, **options: Any) -> httpx.Client:
        """A client without the token (closed with the server)."""
        client = httpx.Client(base_url=self.url, timeout=10.0, **options)
        self.clients.append(client)
        return client

    def work(self) -> Worker:
        """Run a burst worker on the App in this thread until the queues are empty."""
        worker = Worker(self.app, burst=True, concurrency=2, rng=random.Random(0))
        assert worker.run() == 0
        return worker


def run_server(app: App, token: str | None = TOKEN, **options: Any) -> Iterator[Server]:
    """Serve ``app`` on a free loopback port until the generator is closed."""
    port = free_port()
    config = uvicorn.Config(
        create_app(app, token=token, **options),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    wait_for(lambda: server.started)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    client = httpx.Client(base_url=url, headers=headers, timeout=10.0)
    served = Server(app, url, client, token)
    try:
        yield served
    finally:
        for c in [client, *served.clients]:
            c.close()
        server.should_exit = True
        thread.join(timeout=10.0)
        app.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """A server with a token, on a fresh SQLite file."""
    yield from run_server(build_app(f"sqlite:///{tmp_path}/jobs.db"))


@pytest.fixture
def open_server(tmp_path: Path) -> Iterator[Server]:
    """A server without a token (loopback only), on a fresh SQLite file."""
    yield from run_server(build_app(f"sqlite:///{tmp_path}/jobs.db"), token=None)


@pytest.fixture
def periodic_server(tmp_path: Path) -> Iterator[Server]:
    """A server whose App has three periodic tasks, on a fake clock (2023-11-14 22:13:20 UTC)."""
    app = App(broker=f"sqlite:///{tmp_path}/jobs.db", clock=FakeClock())

    @app.periodic(every=300)
    def sweep() -> None:
        return None

    @app.periodic(cron="0 6 * * *", tz="Europe/Oslo")
    def report() -> None:
        return None

    @app.periodic(every=3600, catch_up=60)
    def hourly() -> None:
        return None

    yield from run_server(app)
