"""Worker processes on the real RabbitMQ (127.0.0.1:5672): crashes, poison, many workers.

Each test runs under its own random queue prefix, and deletes at the end the
queues its broker declared (those in the prefix's registry) and nothing else.
Results go to a SQLite file in the test's directory, as on any RabbitMQ deployment.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sleipnir import App
from sleipnir.brokers.amqp import AMQPBroker
from sleipnir.brokers.base import Envelope
from sleipnir.errors import BrokerConnectionError

from ..conftest import require_server
from .conftest import JOBS_MODULE, Sandbox, free_port, wait_until

pytestmark = pytest.mark.integration

HOST, PORT = "127.0.0.1", 5672


def amqp_url(prefix: str, port: int = PORT, **options: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"prefix": prefix, **options}.items())
    return f"amqp://guest:guest@{HOST}:{port}/%2F?{query}"


class AMQPSandbox(Sandbox):
    """A sandbox whose processes keep their results in ``<dir>/results.db``."""

    @property
    def results_url(self) -> str:
        return f"sqlite://{self.dir / 'results.db'}"

    def sleipnir_env(self) -> dict[str, str]:
        return {**super().sleipnir_env(), "SLEIPNIR_RESULTS": self.results_url}

    @property
    def app(self) -> App:
        if self._app is None:
            self._app = App(broker=self.broker_url, results=self.results_url)
        return self._app


@contextlib.contextmanager
def amqp_sandbox(
    directory: Path, prefix: str | None = None, port: str | None = None, **options: str
) -> Iterator[AMQPSandbox]:
    """A sandbox on the shared RabbitMQ under a fresh prefix; its queues deleted on exit.

    ``port``: the processes reach RabbitMQ through this port (a relay) instead.
    """
    require_server("RabbitMQ", HOST, PORT)
    prefix = prefix or f"sleipnir-it-{uuid.uuid4().hex[:12]}"
    url = amqp_url(prefix, int(port) if port else PORT, **options)
    module = f"jobs_{uuid.uuid4().hex[:12]}"
    (directory / f"{module}.py").write_text(JOBS_MODULE)
    box = AMQPSandbox(directory, module, url, "amqp")
    try:
        yield box
    finally:
        box.close()  # its processes are dead before the queues go
        cleaner = AMQPBroker(amqp_url(prefix, **options))
        try:
            cleaner.delete_queues()
        finally:
            cleaner.close()


@pytest.fixture
def box(tmp_path: Path) -> Iterator[AMQPSandbox]:
    with amqp_sandbox(tmp_path) as sandbox:
        yield sandbox


def _broker(box: Sandbox) -> AMQPBroker:
    broker = box.app.broker
    assert isinstance(broker, AMQPBroker)
    return broker


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_kill_9_with_jobs_in_flight_runs_them_again_at_attempt_2(
    tmp_path: Path, queue_type: str
) -> None:
    with amqp_sandbox(tmp_path, queue_type=queue_type) as box:
        _kill_9_with_jobs_in_flight(box)


def _kill_9_with_jobs_in_flight(box: AMQPSandbox) -> None:
    jobs = box.jobs()
    handles = jobs.block.map([(f"k{i}",) for i in range(40)])
    token_of = {h.id: f"k{i}" for i, h in enumerate(handles)}

    # No prefetch: A holds exactly the jobs it started, so exactly those come back.
    a = box.worker("worker-a", "-c", "4", "--prefetch", "0")
    started = wait_until(
        lambda: (
            {t for t, pid in box.ledger_lines() if pid == a.pid}
            if len(box.ledger_lines()) >= 4
            else None
        ),
        20,
        lambda: f"worker A never started 4 jobs\n{a.output()}",
    )
    assert len(started) == 4
    a.send(signal.SIGKILL)
    assert a.wait_exit(5) == -signal.SIGKILL
    box.release()

    # RabbitMQ gives A's unacked jobs back the moment its connection drops.
    b = box.worker("worker-b", "-c", "4", "--burst")
    assert b.wait_exit(60) == 0, b.output()
    for job_id, token in token_of.items():
        record = box.app.results.get(job_id)
        assert record is not None and record.state == "succeeded", (token, b.output())
        assert record.attempt == (2 if token in started else 1), token
    assert box.runs() == {t: 2 if t in started else 1 for t in token_of.values()}
    assert {pid for _, pid in box.ledger_lines()} == {a.pid, b.pid}


def test_poison_message_goes_to_the_dead_letters_and_the_worker_carries_on(
    box: AMQPSandbox,
) -> None:
    jobs = box.jobs()
    w = box.worker("worker", "-c", "2")
    first = jobs.record.delay("before")
    wait_until(lambda: box.runs()["before"] == 1, 20, lambda: w.output())

    import pika  # type: ignore[import-untyped]

    broker = _broker(box)
    conn = pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@{HOST}:{PORT}/%2F"))
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.basic_publish("", broker.names.work("default"), b"\x00\xffnot a job", mandatory=True)
    finally:
        conn.close()

    [dead] = wait_until(lambda: broker.dead_letters("default"), 20, lambda: w.output())
    assert dead.body == b"\x00\xffnot a job"
    assert dead.reason, dead
    assert dead.attempt == 1
    w.assert_running()
    after = jobs.record.delay("after")
    wait_until(lambda: box.runs()["after"] == 1, 20, lambda: w.output())
    w.assert_running()
    assert box.app.status(first.id) == box.app.status(after.id) == "succeeded"
    assert box.app.status(dead.id) == "failed"


def test_three_workers_run_2000_jobs_exactly_once(box: AMQPSandbox) -> None:
    jobs = box.jobs()
    handles = []
    for start in range(0, 2000, 500):
        handles += jobs.record.map([(f"t{i}",) for i in range(start, start + 500)])
    workers = [box.worker(f"worker-{n}", "-c", "8") for n in range(3)]
    wait_until(
        lambda: len(box.ledger_lines()) >= 2000,
        120,
        lambda: f"{len(box.ledger_lines())} of 2000 ran\n" + workers[0].output(),
    )
    for w in workers:
        w.assert_running()
    for w in workers:
        w.send(signal.SIGTERM)
    for w in workers:
        assert w.wait_exit(30) == 0, w.output()
    runs = box.runs()
    assert runs == {f"t{i}": 1 for i in range(2000)}
    assert len({pid for _, pid in box.ledger_lines()}) == 3
    records = [box.app.results.get(h.id) for h in handles]
    assert all(r is not None and r.state == "succeeded" and r.attempt == 1 for r in records)
    [stats] = _broker(box).stats()
    assert (stats.ready, stats.scheduled, stats.dead) == (0, 0, 0)


def test_retries_wait_out_their_backoff_in_the_delay_queues(box: AMQPSandbox) -> None:
    jobs = box.jobs()
    box.release()
    handle = jobs.block.delay("flaky", fail_first=True)
    w = box.worker("worker", "-c", "1")
    wait_until(lambda: box.app.status(handle.id) == "succeeded", 30, lambda: w.output())
    record = box.app.results.get(handle.id)
    assert record is not None and record.attempt == 2
    assert box.runs() == {"flaky": 2}


def _queue_exists(broker: AMQPBroker, name: str) -> bool:
    from sleipnir.brokers.amqp_link import probe

    with broker._con.lock:
        return probe(broker._con, name) != "missing"


@contextlib.contextmanager
def parked_sandbox(tmp_path: Path, job_token: str) -> Iterator[tuple[AMQPSandbox, Any]]:
    """A sandbox that parks after 0.5 s, with one ``block`` job; its marker queues go after."""
    with amqp_sandbox(tmp_path, park_after="0.5") as box:
        handle = box.jobs().block.delay(job_token)
        try:
            yield box, handle
        finally:
            broker = _broker(box)
            with broker._con.lock:
                for name in (broker.names.running(handle.id), broker.names.finished(handle.id)):
                    # A running queue still held by a live worker refuses (405): it goes
                    # with that worker's connection anyway.
                    with contextlib.suppress(Exception):
                        broker._con.scratch().queue_delete(name)


def test_a_long_job_is_parked_before_the_consumer_timeout_and_runs_once(tmp_path: Path) -> None:
    with parked_sandbox(tmp_path, "long") as (box, handle):
        w = box.worker("worker", "-c", "1", "--lease", "0.6")
        box.wait_logged(w, "parked its delivery", 20)
        broker = _broker(box)
        assert _queue_exists(broker, broker.names.running(handle.id))
        # The parked copy comes back while the job runs, and is parked again.
        box.wait_logged(w, "still runs; parked its copy again", 20)
        box.release()
        wait_until(lambda: box.app.status(handle.id) == "succeeded", 20, lambda: w.output())
        # The copy comes back once more, finds the job finished, and is dropped.
        wait_until(
            lambda: not _queue_exists(broker, broker.names.finished(handle.id)),
            20,
            lambda: w.output(),
        )
        w.assert_running()
        assert box.runs() == {"long": 1}


def test_a_parked_job_whose_worker_died_runs_again_at_the_next_attempt(tmp_path: Path) -> None:
    with parked_sandbox(tmp_path, "long") as (box, handle):
        a = box.worker("worker-a", "-c", "1", "--lease", "0.6")
        box.wait_logged(a, "parked its delivery", 20)
        a.send(signal.SIGKILL)
        assert a.wait_exit(5) == -signal.SIGKILL
        box.release()
        b = box.worker("worker-b", "-c", "1")
        wait_until(lambda: box.app.status(handle.id) == "succeeded", 30, lambda: b.output())
        record = box.app.results.get(handle.id)
        assert record is not None and record.attempt == 2
        assert box.runs() == {"long": 2}


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_a_parked_job_whose_worker_died_comes_back_with_one_lost_delivery(
    tmp_path: Path, queue_type: str
) -> None:
    # The parked copy runs as it is (it is not published again), so its reservation's
    # ``lost`` is one more than its header says, and the next copy must carry that.
    with amqp_sandbox(tmp_path, park_after="0.3", queue_type=queue_type) as box:
        a, b = AMQPBroker(box.broker_url), AMQPBroker(box.broker_url)
        try:
            a.enqueue([Envelope("p1", "park", b"{}")])
            [held] = a.reserve(["park"], 1, 30)
            assert held.lost == 0
            running = a.names.running("p1")
            wait_until(
                lambda: a.renew([held], 30) == [True] and _queue_exists(b, running),
                10,
                "the delivery was never parked",
            )
            with a._con.lock:
                a._con.drop()  # its worker's connection closes, and its running queue with it
            got: list[Any] = []
            wait_until(
                lambda: got.extend(b.reserve(["park"], 1, 30)) or got,
                20,
                "the parked copy never ran again",
            )
            assert [(r.id, r.attempt, r.lost) for r in got] == [("p1", 2, 1)]
            assert b.release(got) == [True]
            [again] = wait_until(lambda: b.reserve(["park"], 1, 30), 10, "never released")
            assert (again.id, again.attempt, again.lost) == ("p1", 2, 1)
            assert b.ack([again]) == [True]
        finally:
            a.close()
            b.close()


# -- connection loss ---------------------------------------------------------------------

PROXY = r"""
import socket, sys, threading, os

listen_port, target_port = int(sys.argv[1]), int(sys.argv[2])
server = socket.create_server(("127.0.0.1", listen_port))

def pipe(a, b):
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

print("listening", flush=True)
while True:
    client, _ = server.accept()
    upstream = socket.create_connection(("127.0.0.1", target_port))
    threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
    threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
"""


def start_proxy(box: Sandbox, name: str, port: int) -> Any:
    """A TCP relay from ``port`` to RabbitMQ; killing it drops every connection through it."""
    proxy = box.spawn(name, [sys.executable, "-c", PROXY, str(port), str(PORT)], pipe_stdout=True)
    wait_until(lambda: proxy.stdout().startswith("listening"), 10, proxy.output)
    return proxy


def test_a_worker_that_loses_its_connection_reconnects_and_finishes_every_job(
    tmp_path: Path,
) -> None:
    require_server("RabbitMQ", HOST, PORT)
    port = free_port()
    prefix = f"sleipnir-it-{uuid.uuid4().hex[:12]}"
    with amqp_sandbox(tmp_path, prefix=prefix, port=str(port)) as box:
        proxy = start_proxy(box, "proxy", port)
        jobs = box.jobs()
        handles = jobs.block.map([(f"j{i}",) for i in range(30)])
        # A short lease: the worker checks in every second even while all its slots are busy.
        w = box.worker("worker", "-c", "4", "--lease", "3")
        wait_until(lambda: len(box.runs()) >= 4, 20, lambda: w.output())
        proxy.kill()
        box.wait_logged(w, "was lost", 20)  # it noticed
        box.release()
        proxy = start_proxy(box, "proxy-2", port)
        wait_until(
            lambda: all(box.app.status(h.id) == "succeeded" for h in handles),
            60,
            lambda: w.output(),
        )
        w.assert_running()
        runs = box.runs()
        assert set(runs) == {f"j{i}" for i in range(30)}
        # The jobs it held when the connection dropped went back to the queue and ran again.
        assert all(n in (1, 2) for n in runs.values()), runs


def test_a_lost_connection_raises_at_once_and_the_next_call_reconnects(
    box: AMQPSandbox,
) -> None:
    port = free_port()
    proxy_argv = [sys.executable, "-c", PROXY, str(port), str(PORT)]
    proxy = box.spawn("proxy", proxy_argv, pipe_stdout=True)
    wait_until(lambda: proxy.stdout().startswith("listening"), 10, proxy.output)
    prefix = _broker(box).names.prefix
    broker = AMQPBroker(amqp_url(prefix, port=port, connect_timeout="1"))
    try:
        env = [Envelope(f"c{i}", "conn", b'{"n": %d}' % i) for i in range(3)]
        broker.enqueue(env[:1])
        [held] = broker.reserve(["conn"], 1, 30)
        proxy.kill()  # every connection through it drops, and nothing listens any more

        def refused() -> Any:
            try:
                broker.enqueue(env[1:2])
            except BrokerConnectionError as exc:
                return exc
            return None

        assert wait_until(refused, 20, "enqueue never failed with the proxy gone")
        with pytest.raises(BrokerConnectionError):
            broker.reserve(["conn"], 1, 30)
        assert broker.ack([held]) == [False]  # its channel is gone: the token is stale

        proxy = box.spawn("proxy-2", proxy_argv, pipe_stdout=True)
        wait_until(lambda: proxy.stdout().startswith("listening"), 10, proxy.output)

        def enqueued() -> bool:
            try:
                broker.enqueue(env[2:])
            except BrokerConnectionError:
                return False
            return True

        wait_until(enqueued, 20, "never reconnected")
        got: list[Any] = []
        wait_until(
            lambda: got.extend(broker.reserve(["conn"], 10, 30)) or len(got) >= 2,
            20,
            lambda: f"only {got} came back",
        )
        # The unacked job came back when the connection dropped, counted as an attempt.
        assert sorted((r.id, r.attempt) for r in got) == [("c0", 2), ("c2", 1)]
    finally:
        broker.close()


# -- configuration (no server needed) -------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "queue_type=stream",
        "park_after=0",
        "park_after=soon",
        "heartbeat=-1",
        "prefix=a:b",
        "timeout=0",
        "connect_timeout=inf",
    ],
)
def test_a_bad_url_option_is_refused_when_the_broker_is_built(query: str) -> None:
    from sleipnir.errors import ConfigurationError

    with pytest.raises(ConfigurationError):
        AMQPBroker(f"amqp://guest:guest@{HOST}:{PORT}/%2F?{query}")


def test_the_bound_is_derived_from_timeout_and_pikas_own_options_in_the_url_win() -> None:
    from sleipnir.brokers.amqp_link import parse_url

    params, options = parse_url(f"amqp://guest:guest@{HOST}:{PORT}/%2F")
    assert (options.timeout, options.connect_timeout) == (5.0, 1.5)
    assert (params.socket_timeout, params.stack_timeout) == (1.5, 5.0)
    assert params.blocked_connection_timeout == 5.0
    assert params.tcp_options["TCP_USER_TIMEOUT"] == 5000

    params, options = parse_url(
        f"amqp://guest:guest@{HOST}:{PORT}/%2F?timeout=2&socket_timeout=7&stack_timeout=9"
    )
    assert options.timeout == 2.0
    assert (params.socket_timeout, params.stack_timeout) == (7.0, 9.0)
    assert params.blocked_connection_timeout == 2.0
    assert params.tcp_options["TCP_USER_TIMEOUT"] == 2000


def test_priorities_map_onto_rabbitmqs_0_to_9_around_the_default() -> None:
    from sleipnir.brokers.amqp import amqp_priority

    assert [amqp_priority(p) for p in (-255, -5, -4, 0, 1, 5, 6, 255)] == [0, 0, 0, 4, 5, 9, 9, 9]


def test_an_app_on_rabbitmq_keeps_results_in_a_sqlite_file_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app = App(broker=amqp_url("unused"))
    assert app.results_url == f"sqlite://{tmp_path / 'sleipnir-results.db'}"
    assert App(broker=amqp_url("unused"), results="memory://").results_url == "memory://"


def test_a_queue_name_with_a_colon_is_refused_and_nothing_is_stored(box: AMQPSandbox) -> None:
    from sleipnir.errors import BrokerError

    broker = _broker(box)
    with pytest.raises(BrokerError, match="cannot be used on RabbitMQ"):
        broker.enqueue([Envelope("a", "fine", b"{}"), Envelope("b", "not:fine", b"{}")])
    assert broker.stats() == []


def test_enqueue_to_a_server_that_stopped_answering_fails_instead_of_hanging(
    box: AMQPSandbox,
) -> None:
    port = free_port()
    proxy = start_proxy(box, "proxy", port)
    prefix = _broker(box).names.prefix
    broker = AMQPBroker(amqp_url(prefix, port=port, heartbeat="1", connect_timeout="1"))
    try:
        broker.enqueue([Envelope("before", "hang", b"{}")])
        proxy.send(signal.SIGSTOP)  # connections stay open, nothing answers
        try:
            started = time.monotonic()
            with pytest.raises(BrokerConnectionError):
                broker.enqueue([Envelope("during", "hang", b"{}")])
            # Two missed heartbeats, then one new connection that times out.
            assert time.monotonic() - started < 30
        finally:
            proxy.send(signal.SIGCONT)
    finally:
        broker.close()


def test_after_a_connection_loss_every_call_works_on_the_first_try_once_the_server_is_back(
    box: AMQPSandbox,
) -> None:
    # What a restart of RabbitMQ does to a client: every connection ends while it sits
    # idle. Done with a relay of our own, so only this test's connections are cut.
    port = free_port()
    proxy = start_proxy(box, "proxy", port)
    prefix = _broker(box).names.prefix
    broker = AMQPBroker(amqp_url(prefix, port=port, connect_timeout="1"))
    try:
        broker.enqueue([Envelope("held", "conn", b"{}")])
        [held] = broker.reserve(["conn"], 1, 30)
        proxy.kill()
        proxy = start_proxy(box, "proxy-2", port)
        # The delivery went back to the queue with the connection: its ack is refused.
        assert broker.ack([held]) == [False]
        got = broker.reserve(["conn"], 10, 30)  # no error: the dead connection is replaced
        broker.enqueue([Envelope("after", "conn", b"{}")])
        wait_until(
            lambda: got.extend(broker.reserve(["conn"], 10, 30)) or len(got) >= 2,
            20,
            lambda: f"only {got} came back",
        )
        assert sorted((r.id, r.attempt) for r in got) == [("after", 1), ("held", 2)]
        assert broker.ack(got) == [True, True]
    finally:
        broker.close()
