"""Unit-test plumbing: a fake clock, an App on each embedded broker, a burst worker.

Nothing here waits on the wall clock: delays, leases and backoff are moved past
with ``clock.advance`` and the worker runs in burst mode in the test's own thread.
"""

from __future__ import annotations

import importlib
import random
import socket
import sys
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from click.testing import CliRunner, Result

from sleipnir import App, Worker
from sleipnir.brokers.base import Envelope
from sleipnir.cli import main
from sleipnir.job import Job, encode_job, new_job_id
from sleipnir.testing import FakeClock
from sleipnir.web import create_app

from ..waiting import wait_until


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite"])
def app(request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path) -> Iterator[App]:
    """An App on the fake clock, once on the memory broker and once on a SQLite file."""
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/jobs.db"
    app = App(broker=url, clock=clock)
    yield app
    app.close()


def drain(app: App, concurrency: int = 2) -> Worker:
    """Run a burst worker in this thread until nothing is ready; return it for its stats."""
    worker = Worker(app, burst=True, concurrency=concurrency, rng=random.Random(0))
    assert worker.run() == 0
    return worker


def attempt_of(app: App, job_id: str) -> int:
    """The broker's delivery count of a job it holds (read from inside a running task)."""
    info = app.broker.job_info(job_id)
    assert info is not None
    return info.attempt


def raw_job(
    clock: FakeClock, task: str, args: Sequence[Any] = (), queue: str = "default"
) -> Envelope:
    """An envelope built by hand, bypassing the checks ``delay`` makes."""
    job = Job(id=new_job_id(), task=task, args=list(args), queue=queue, enqueued_at=clock.time())
    return Envelope(id=job.id, queue=queue, body=encode_job(job))


# -- the command line ------------------------------------------------------------

CLI_MODULE = """
from sleipnir import App, Fail

app = App(broker="sqlite:///{db}")


@app.task(retries=0)
def add(a: int, b: int) -> int:
    return a + b


@app.task(retries=0)
def refuse(why: str) -> None:
    raise Fail(why)
"""


@dataclass
class CliApp:
    """A module in tmp_path that builds an App on a SQLite file, and ways to drive it."""

    module: str
    runner: CliRunner

    def __call__(self, *args: str, input: str | None = None) -> Result:
        """Run ``sleipnir ARGS`` in-process; ``APP`` (or ``APP:attr``) names the module."""
        argv = [self.module + a[3:] if a == "APP" or a.startswith("APP:") else a for a in args]
        return self.runner.invoke(main, argv, input=input, catch_exceptions=False)

    @property
    def app(self) -> App:
        """The App object the CLI loaded (the same module object)."""
        app: App = importlib.import_module(self.module).app
        return app

    def work(self) -> Worker:
        """Run a burst worker on the module's App (the ``worker`` command calls os._exit)."""
        worker = Worker(self.app, burst=True, concurrency=2, rng=random.Random(0))
        assert worker.run() == 0
        return worker


def cli_app(source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliApp]:
    """An App module written from ``source`` (``{db}``: a SQLite file in tmp_path), for
    the ``sleipnir`` command to load; its App is closed and forgotten afterwards."""
    name = f"sleipnir_unit_cli_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(source.format(db=tmp_path / f"{name}.db"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield CliApp(name, CliRunner())
    module = sys.modules.pop(name, None)
    if module is not None:
        module.app.close()


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliApp]:
    yield from cli_app(CLI_MODULE, tmp_path, monkeypatch)


# -- the HTTP API ----------------------------------------------------------------


def serve_api(app: App) -> Iterator[httpx.Client]:
    """Serve ``app``'s HTTP API (no token) on a free loopback port from a thread of
    this process; yield a client for it, and stop the server afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(app), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 10.0, "the server did not start")
    assert server.started, "the server's thread ended before it started"
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=10.0)
