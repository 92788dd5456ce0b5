"""Redis faults a user meets: odd URLs, secrets in URLs, hung servers, keys gone missing."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from sleipnir import App, BrokerConnectionError, ConfigurationError
from sleipnir.brokers import broker_from_url
from sleipnir.brokers.base import redact_url
from sleipnir.clock import SystemClock

from .conftest import REDIS_HOST, REDIS_PORT, redis_py, shared_redis_url

pytestmark = pytest.mark.integration


@pytest.fixture
def url() -> Iterator[str]:
    with shared_redis_url() as url:
        yield url


def test_redact_url_hides_the_password_and_keeps_the_rest() -> None:
    assert redact_url("redis://:s3cret@h:6379/0?prefix=x") == "redis://:***@h:6379/0?prefix=x"
    assert redact_url("amqp://guest:pw@h/%2F") == "amqp://guest:***@h/%2F"
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
    assert redact_url("sqlite:///tmp/x.db") == "sqlite:///tmp/x.db"


def test_a_password_never_shows_in_reprs_or_connection_errors() -> None:
    app = App(broker="redis://:hunter2@127.0.0.1:1/0?socket_connect_timeout=0.2")
    try:
        assert "hunter2" not in repr(app)
        with pytest.raises(BrokerConnectionError) as caught:
            app.broker.stats()
        assert "hunter2" not in str(caught.value)
        assert "***" in str(caught.value)
    finally:
        app.close()


def test_an_unknown_url_option_is_a_configuration_error_that_names_it() -> None:
    with pytest.raises(ConfigurationError, match="no_such_option"):
        broker_from_url("redis://127.0.0.1:6379/0?no_such_option=1", SystemClock())


def test_unix_socket_urls_reach_the_redis_backend(tmp_path: object) -> None:
    broker = broker_from_url("unix:///nonexistent/redis.sock?prefix=x", SystemClock())
    try:
        assert type(broker).__name__ == "RedisBroker"
        with pytest.raises(BrokerConnectionError):
            broker.stats()
    finally:
        broker.close()


def test_a_server_that_accepts_but_never_answers_gives_an_error_not_a_hang() -> None:
    # A listening socket that never replies: what a hung or overloaded server looks like.
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    app = App(broker=f"redis://127.0.0.1:{port}/0?socket_timeout=0.2")

    @app.task
    def noop(n: int) -> int:
        return n

    outcome: dict[str, object] = {}

    def produce() -> None:
        start = time.monotonic()
        try:
            noop.delay(1)
        except Exception as exc:
            outcome["error"] = exc
        outcome["took"] = time.monotonic() - start

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    thread.join(10)
    try:
        assert not thread.is_alive(), "delay() still waiting after 10 s"
        assert isinstance(outcome.get("error"), BrokerConnectionError), outcome
        # three tries of 0.2 s plus backoff; far from redis-py's minutes of nested retries
        assert float(outcome["took"]) < 3.0, outcome  # type: ignore[arg-type]
    finally:
        app.close()
        listener.close()


def test_a_ready_id_whose_job_hash_is_gone_is_dropped_and_the_next_job_runs(url: str) -> None:
    app = App(broker=url)

    @app.task
    def noop(n: int) -> int:
        return n

    try:
        lost, kept = noop.delay(1), noop.delay(2)
        prefix = url.rpartition("prefix=")[2]
        client = redis_py().Redis(host=REDIS_HOST, port=REDIS_PORT)
        try:
            assert client.delete(f"{prefix}:job:{lost.id}") == 1
        finally:
            client.close()
        got = app.broker.reserve(["default"], 10, 30.0)
        assert [r.id for r in got] == [kept.id]
        assert app.broker.job_info(lost.id) is None
    finally:
        app.close()
