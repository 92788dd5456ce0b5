"""PostgreSQL behind a link that silently drops every packet: every call gives up in time.

A firewall that drops instead of rejecting, a cable pulled between two switches, a
cloud network partition: the client's packets vanish and nothing comes back, not even
a reset. TCP by itself then waits for minutes (retransmissions) or for ever (a
connection waiting on an answer). Each test here puts the private cluster of
``postgres_server`` in a network namespace of its own, reached from this process over
a veth pair. :meth:`Link.cut` makes each end of the pair swallow what arrives (an
ingress filter redirects every packet into a sink device, a veth whose peer is down)
and :meth:`Link.restore` removes the filters. A cut is silent: no RST, no ICMP, and the
sender's own stack believes every packet left (a drop on the sender's egress would
count as local congestion, which TCP treats differently); both sides' sockets still
think they are connected.

The test process stays in the root namespace, so the broker under test, its pool's
threads included, talks to the server only over the link. The test itself reaches
the server over its Unix socket (not namespaced), so it can look and act on the
server while the link is cut.

Needs root, ``ip`` and ``tc`` (ingress qdisc, u32 filter, mirred action); without them
the tests skip loudly (fail under ``CI=true``).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
import pytest

from sleipnir import App, BrokerConnectionError
from sleipnir.brokers.base import Envelope
from sleipnir.brokers.postgres import PostgresBroker, PostgresResultStore
from sleipnir.clock import SystemClock
from sleipnir.results import WorkerBeat

from ..conftest import IN_CI
from .conftest import PostgresServer, wait_until

pytestmark = pytest.mark.integration

T = TypeVar("T")

TIMEOUT_S = 2
"""The ``connect_timeout`` most tests give their URLs (the default is 5 s)."""


def bound(connect_timeout: float = TIMEOUT_S) -> float:
    """What a cut-off call may take: the documented ``connect_timeout`` + 1 s, plus slack
    for a busy host."""
    return connect_timeout + 1.0 + 1.5


def _no_netns(why: str) -> None:
    if IN_CI:
        pytest.fail(f"cannot cut a link here: {why}; CI must run these tests", pytrace=False)
    print(f"\n*** SKIPPING POSTGRES LINK-CUT TESTS: {why} ***", file=sys.stderr)
    pytest.skip(f"SKIPPED: cannot cut a link here: {why}")


def _sh(*argv: str, netns: str | None = None) -> None:
    if netns is not None:
        argv = ("ip", "netns", "exec", netns, *argv)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")


def _free_subnet() -> ipaddress.IPv4Network:
    """A /30 in 10.0.0.0/8 that no address of this host's root namespace lies in."""
    taken = subprocess.run(
        ["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True
    ).stdout
    while True:
        net = ipaddress.IPv4Network(
            (int(ipaddress.IPv4Address("10.0.0.0")) + secrets.randbelow(1 << 22) * 4, 30)
        )
        if str(net.network_address)[:-2] not in taken:  # rough, and enough with 2^22 picks
            return net


class Link:
    """A veth pair between this process (root namespace) and a namespace holding the server."""

    def __init__(self) -> None:
        tag = secrets.token_hex(4)
        self.netns = f"slpg-{tag}"
        self.host_dev, self.ns_dev = f"slpg{tag}h", f"slpg{tag}n"
        net = _free_subnet()
        self.host_ip, self.server_ip = (str(a) for a in list(net.hosts())[:2])
        self.network = str(net)
        self.sink = f"slpg{tag}s"
        self.is_cut = False

    def create(self) -> None:
        _sh("ip", "netns", "add", self.netns)
        _sh("ip", "link", "add", self.host_dev, "type", "veth", "peer", "name", self.ns_dev)
        _sh("ip", "link", "set", self.ns_dev, "netns", self.netns)
        _sh("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_dev)
        _sh("ip", "link", "set", self.host_dev, "up")
        _sh("ip", "addr", "add", f"{self.server_ip}/30", "dev", self.ns_dev, netns=self.netns)
        _sh("ip", "link", "set", self.ns_dev, "up", netns=self.netns)
        _sh("ip", "link", "set", "lo", "up", netns=self.netns)
        for netns in (None, self.netns):  # a sink on each side: up, its peer down
            _sh("ip", "link", "add", self.sink, "type", "veth", "peer", "name", self.sink + "p",
                netns=netns)  # fmt: skip
            _sh("ip", "link", "set", self.sink, "up", netns=netns)

    def _ends(self) -> list[tuple[str, str | None]]:
        return [(self.host_dev, None), (self.ns_dev, self.netns)]

    def cut(self) -> None:
        """From now on each end swallows every packet that reaches it, without a word."""
        for dev, netns in self._ends():
            _sh("tc", "qdisc", "add", "dev", dev, "ingress", netns=netns)
            _sh("tc", "filter", "add", "dev", dev, "parent", "ffff:", "protocol", "all",
                "u32", "match", "u32", "0", "0",
                "action", "mirred", "egress", "redirect", "dev", self.sink,
                netns=netns)  # fmt: skip
        self.is_cut = True

    def restore(self) -> None:
        if not self.is_cut:
            return
        self.is_cut = False
        for dev, netns in self._ends():
            _sh("tc", "qdisc", "del", "dev", dev, "ingress", netns=netns)

    def destroy(self) -> None:
        for dev in (self.host_dev, self.sink):  # each takes its peer with it
            with contextlib.suppress(RuntimeError):
                _sh("ip", "link", "del", dev)
        with contextlib.suppress(RuntimeError):
            _sh("ip", "netns", "del", self.netns)


class CutServer:
    """The private cluster, in its own namespace behind :class:`Link`."""

    def __init__(self, server: PostgresServer, link: Link) -> None:
        self.server = server
        self.link = link

    def url(self, schema: str = "sleipnir_cut", connect_timeout: int | None = TIMEOUT_S) -> str:
        """The URL a broker uses: over the link; ``connect_timeout=None``: the default."""
        url = (
            f"postgresql://postgres@{self.link.server_ip}:{self.server.port}/postgres"
            f"?schema={schema}"
        )
        return url if connect_timeout is None else f"{url}&connect_timeout={connect_timeout}"

    def admin(self) -> psycopg.Connection[Any]:
        """A connection of the test's own over the server's Unix socket, which no cut reaches."""
        return psycopg.connect(
            host=str(self.server.dir), port=self.server.port, user="postgres",
            dbname="postgres", autocommit=True, connect_timeout=5,
        )  # fmt: skip

    def sessions(self) -> list[tuple[int, str, str]]:
        """``(pid, state, wait event type)`` of every session that came over the link."""
        with self.admin() as conn:
            rows = conn.execute(
                "SELECT pid, coalesce(state, ''), coalesce(wait_event_type, '')"
                " FROM pg_stat_activity WHERE client_addr = %s::inet",
                (self.link.host_ip,),
            ).fetchall()
        return [(pid, state, waiting) for pid, state, waiting in rows]

    def pids(self) -> set[int]:
        return {pid for pid, _, _ in self.sessions()}

    def jobs(self, schema: str = "sleipnir_cut") -> list[tuple[str, int, int]]:
        """``(id, attempt, token)`` of every stored job, read past the link."""
        with self.admin() as conn:
            rows = conn.execute(f"SELECT id, attempt, token FROM {schema}.jobs ORDER BY seq")
            return [(job_id, attempt, token) for job_id, attempt, token in rows]

    def wait_sessions_gone(self, pids: set[int], timeout: float) -> None:
        """Until none of ``pids`` is left on the server: nothing they hold can commit after."""
        wait_until(
            lambda: not pids & self.pids(),
            timeout,
            lambda: f"sessions still on the server: {self.sessions()}",
            interval=0.1,
        )


@pytest.fixture
def cut_server(postgres_server: PostgresServer) -> Iterator[CutServer]:
    """``postgres_server`` restarted inside a fresh network namespace, reached over a veth link."""
    if os.geteuid() != 0:
        _no_netns("network namespaces need root")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            _no_netns(f"{tool!r} is not installed (iproute2)")
    link = Link()
    try:
        try:
            link.create()
            link.cut()  # proves the filters work here before the test depends on them
            link.restore()
        except RuntimeError as exc:
            _no_netns(str(exc))
        server = postgres_server
        server.stop()
        with (server.data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {link.network} trust\n")
        # The postmaster (and every backend it forks) lives in the namespace; the
        # Unix socket in server.dir stays reachable from here.
        options = f"-p {server.port} -c listen_addresses={link.server_ip} -k {server.dir}"
        _sh(
            *server._as, str(server.bin / "pg_ctl"), "-D", str(server.data), "-o", options,
            "-l", str(server.dir / "postgres.log"), "-w", "start",
            netns=link.netns,
        )  # fmt: skip
        try:
            yield CutServer(server, link)
        finally:
            with contextlib.suppress(RuntimeError):
                link.restore()
            with contextlib.suppress(AssertionError):
                server.stop("immediate")
    finally:
        link.destroy()


def _outcome(
    future: concurrent.futures.Future[T], since: float, limit: float, link: Link
) -> tuple[float, T | BaseException]:
    """(seconds from ``since`` until ``future`` ended, its result or exception).

    If it is still running ``limit`` s after ``since``, the link is restored (so the
    call can end, and the test with it) and the test fails: it did not give up in time.
    """
    try:
        future.exception(timeout=max(0.0, since + limit - time.monotonic()))
    except concurrent.futures.TimeoutError:
        link.restore()
        outcome = future.exception(timeout=120) or future.result()
        raise AssertionError(
            f"still blocked {limit} s into the cut; once the link came back it ended"
            f" after {time.monotonic() - since:.1f} s with {outcome!r}"
        ) from None
    elapsed = time.monotonic() - since
    error = future.exception()
    return elapsed, error if error is not None else future.result()


def _timed(
    call: Callable[[], T], link: Link, limit: float = bound()
) -> tuple[float, T | BaseException]:
    """Run ``call`` on a thread from now; see :func:`_outcome`."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        since = time.monotonic()
        return _outcome(pool.submit(call), since, limit, link)


def test_a_delay_cut_off_on_a_warm_connection_fails_in_time_and_never_lands_later(
    cut_server: CutServer,
) -> None:
    # The default timeouts, as in production: the bound is about 6 s.
    app = App(broker=cut_server.url(connect_timeout=None), results="memory://")

    @app.task(queue="cut")
    def noop(n: int) -> int:
        return n

    try:
        before = noop.delay(0)  # the pool holds a warm connection from here on
        pids = cut_server.pids()
        assert pids
        cut_server.link.cut()
        elapsed, outcome = _timed(lambda: noop.delay(1), cut_server.link, bound(5))
        assert isinstance(outcome, BrokerConnectionError), outcome
        assert elapsed < bound(5)
        cut_server.link.restore()
        # Every session the cut stranded has ended on the server, so none of them can
        # commit anything any more: only the job from before the cut is stored.
        cut_server.wait_sessions_gone(pids, 30.0)
        assert [job_id for job_id, _, _ in cut_server.jobs()] == [before.id]
        after = noop.delay(2)  # and the pool recovered on its own
        assert [job_id for job_id, _, _ in cut_server.jobs()] == [before.id, after.id]
    finally:
        app.close()


def test_a_commit_cut_off_unsent_is_reported_unknown_and_never_applied_after(
    cut_server: CutServer,
) -> None:
    broker = PostgresBroker(cut_server.url(), clock=SystemClock())
    try:
        broker.stats()  # the schema exists

        def work(conn: psycopg.Connection[Any]) -> None:
            conn.execute(f"INSERT INTO {broker._s}.queues (name) VALUES ('late')")
            cut_server.link.cut()  # the INSERT is done; the COMMIT after it is not sent yet

        pids = cut_server.pids()
        elapsed, outcome = _timed(lambda: broker._db.run(work), cut_server.link)
        assert isinstance(outcome, BrokerConnectionError), outcome
        assert "may or may not have been applied" in str(outcome)
        assert elapsed < bound()
        # The kernel dropped the connection with the COMMIT still in its send queue:
        # with the link back, nothing of it reaches the server.
        cut_server.link.restore()
        cut_server.wait_sessions_gone(pids, 30.0)
        assert [q.queue for q in broker.stats()] == []
    finally:
        broker.close()


def test_a_reserve_whose_answer_is_cut_off_fails_in_time_and_leases_nothing(
    cut_server: CutServer,
) -> None:
    broker = PostgresBroker(cut_server.url(), clock=SystemClock())
    try:
        broker.enqueue([Envelope(f"j{n}", "q", b"{}") for n in range(3)])
        with cut_server.admin() as admin, concurrent.futures.ThreadPoolExecutor(1) as pool:
            # The reserve reaches the server and waits behind this lock: its request is
            # delivered and acknowledged, only its answer is still to come.
            admin.execute("BEGIN")
            admin.execute(f"LOCK TABLE {broker._s}.jobs IN ACCESS EXCLUSIVE MODE")
            reserved = pool.submit(broker.reserve, ["q"], 10, 30.0)
            wait_until(
                lambda: any(waiting == "Lock" for _, _, waiting in cut_server.sessions()),
                10.0,
                lambda: f"the reserve never waited on the lock: {cut_server.sessions()}",
            )
            pids = cut_server.pids()
            cut_server.link.cut()
            since = time.monotonic()
            admin.execute("COMMIT")  # the server leases the jobs and answers into the void
            elapsed, outcome = _outcome(reserved, since, bound(), cut_server.link)
        assert isinstance(outcome, BrokerConnectionError), outcome
        assert elapsed < bound()
        # The server finds the client gone (its own keepalives) and rolls the lease back.
        cut_server.wait_sessions_gone(pids, 30.0)
        cut_server.link.restore()
        assert [attempt for _, attempt, _ in cut_server.jobs()] == [0, 0, 0]
        assert sorted(r.attempt for r in broker.reserve(["q"], 10, 30.0)) == [1, 1, 1]
    finally:
        broker.close()


def test_a_heartbeat_cut_off_on_a_warm_connection_fails_in_time(cut_server: CutServer) -> None:
    store = PostgresResultStore(cut_server.url(), clock=SystemClock())
    try:
        beat = WorkerBeat("w1", time.time(), time.time() + 60, b"{}", b"{}")
        store.beat(beat, keep=3600.0)
        cut_server.link.cut()
        elapsed, outcome = _timed(lambda: store.beat(beat, keep=3600.0), cut_server.link)
        assert isinstance(outcome, BrokerConnectionError), outcome
        assert elapsed < bound()
        cut_server.link.restore()
        store.beat(beat, keep=3600.0)  # the pool recovered on its own
        assert [b.worker_id for b in store.beats()] == ["w1"]
    finally:
        store.close()


def test_an_idle_waiter_cut_off_returns_in_time_and_the_next_wait_raises(
    cut_server: CutServer,
) -> None:
    broker = PostgresBroker(cut_server.url(), clock=SystemClock())
    try:
        broker.stats()  # a warm pooled connection
        broker.wait([], 0.01)  # now listening too
        assert broker._listener is not None
        cut_server.link.cut()
        # Only the listening connection: it breaks (keepalives) and counts as a wake-up.
        elapsed, outcome = _timed(lambda: broker.wait([], 60.0), cut_server.link)
        assert outcome is None
        assert elapsed < bound()
        # With queues, wait first reads the next due time through the pool: that fails.
        elapsed, outcome = _timed(lambda: broker.wait(["q"], 60.0), cut_server.link)
        assert isinstance(outcome, BrokerConnectionError), outcome
        assert elapsed < bound()
        cut_server.link.restore()
        broker.wait(["q"], 0.01)  # listens anew
        broker.enqueue([Envelope("a", "q", b"{}")])
        assert [r.id for r in broker.reserve(["q"], 10, 30.0)] == ["a"]
    finally:
        broker.close()
