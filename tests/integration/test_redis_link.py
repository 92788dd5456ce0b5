"""The Redis client cut off from its server: what a call that failed did, and how fast it failed.

* A link that silently drops packets (``tc netem loss 100%`` on a veth pair between two
  network namespaces of the test's own): a call fails within its stated bound, the
  bytes it had not delivered are thrown away rather than sent when the link returns,
  and the next call after the link's return gets through within about a second.
* A stalled server (SIGSTOP), which holds a request in its receive buffer: the request
  is sent once, and when the server wakes after the caller gave up it changes nothing.
* The scripts' clock is the server's: a host whose clock is an hour behind still sees
  leases run out by the server's time, and cannot shorten a lease.
* An idle worker's wait costs one BLPOP after its reserve, counted with INFO commandstats.

Without ``ip netns`` the namespace test skips loudly; under CI=true it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import sleipnir
from sleipnir import BrokerConnectionError
from sleipnir.brokers.base import Envelope
from sleipnir.brokers.redis import RedisBroker
from sleipnir.clock import SystemClock

from ..conftest import IN_CI
from .conftest import REDIS_SERVER, RedisServer, redis_py, shared_redis_url, wait_until

pytestmark = pytest.mark.integration

Servers = Callable[..., RedisServer]
SRC = Path(sleipnir.__file__).resolve().parents[1]
"""Where the sleipnir under test lives, for the processes the tests start."""


def _envelope(job_id: str, queue: str = "q") -> Envelope:
    return Envelope(id=job_id, queue=queue, body=b'{"never": "decoded here"}')


def _calls(client: Any) -> dict[str, int]:
    """Commands served since the last CONFIG RESETSTAT, by name (script calls included)."""
    stats = client.info("commandstats")
    out = {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}
    for ours in ("info", "config|resetstat", "ping"):
        out.pop(ours, None)
    return out


# -- a silent link, in network namespaces ---------------------------------------------------


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {done.stdout}{done.stderr}")
    return done.stdout


class Link:
    """Two network namespaces joined by a veth pair: the server's and the client's.

    Its addresses exist only inside these namespaces. :meth:`cut` drops every packet
    both ways without a word (netem loss 100%, or the blackhole qdisc on kernels
    without netem), as a dead switch or a partition does; :meth:`restore` lets them
    through again.
    """

    SERVER_IP, CLIENT_IP = "10.213.7.1", "10.213.7.2"

    def __init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.ns = {"server": f"slp-rs-{tag}", "client": f"slp-rc-{tag}"}
        self.dev = {"server": f"slprs{tag}", "client": f"slprc{tag}"}
        self.made: list[str] = []
        self._dropper: list[str]
        ips = {"server": self.SERVER_IP, "client": self.CLIENT_IP}
        for side in ("server", "client"):
            _run("ip", "netns", "add", self.ns[side])
            self.made.append(self.ns[side])
        _run("ip", "link", "add", self.dev["server"], "type", "veth", "peer", self.dev["client"])
        for side in ("server", "client"):
            ns, dev = self.ns[side], self.dev[side]
            _run("ip", "link", "set", dev, "netns", ns)
            _run("ip", "-n", ns, "addr", "add", f"{ips[side]}/30", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")

    def run_in(self, side: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns[side], *argv]

    def cut(self) -> None:
        for side in ("server", "client"):
            # netem loss 100% where the kernel has it; the blackhole qdisc drops as quietly
            _run(*self.run_in(side, ["tc", "qdisc", "add", "dev", self.dev[side], "root",
                                     *self.dropper()]))  # fmt: skip

    def dropper(self) -> list[str]:
        if not hasattr(self, "_dropper"):
            dev = self.dev["client"]
            probe = ["tc", "qdisc", "add", "dev", dev, "root", "netem", "loss", "100%"]
            found = subprocess.run(self.run_in("client", probe), capture_output=True, timeout=30)
            if found.returncode == 0:
                _run(*self.run_in("client", ["tc", "qdisc", "del", "dev", dev, "root"]))
            self._dropper = ["netem", "loss", "100%"] if found.returncode == 0 else ["blackhole"]
        return self._dropper

    def restore(self) -> None:
        for side in ("server", "client"):
            _run(*self.run_in(side, ["tc", "qdisc", "del", "dev", self.dev[side], "root"]))

    def queued_to_server(self) -> list[str]:
        """The client's TCP sockets to the server that still hold bytes to send."""
        out = _run(*self.run_in("client", ["ss", "-tanH", "dst", self.SERVER_IP]))
        rows = [line.split() for line in out.splitlines() if line.strip()]
        return [" ".join(r) for r in rows if len(r) >= 3 and r[2] != "0"]

    def connecting(self) -> bool:
        """A connect to the server is under way: its SYN is out, unanswered."""
        out = _run(*self.run_in("client", ["ss", "-tanH", "state", "syn-sent"]))
        return self.SERVER_IP in out

    def close(self) -> None:
        for ns in self.made:  # deleting a namespace deletes its end of the veth pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture
def link() -> Iterator[Link]:
    if shutil.which("ip") is None or shutil.which("tc") is None or os.geteuid() != 0:
        what = "network namespaces need root and the ip and tc programs"
        if IN_CI:
            pytest.fail(f"{what}; CI must run the silent-link tests", pytrace=False)
        print(f"\n*** SKIPPING REDIS LINK TESTS: {what} ***", file=sys.stderr)
        pytest.skip(f"SKIPPED: {what}")
    made = Link()
    try:
        yield made
    finally:
        made.close()


DRIVER = r'''
"""Runs broker calls read from stdin (one JSON object a line), answers one JSON line each."""
import json, sys, time
from sleipnir import BrokerConnectionError
from sleipnir.brokers.base import Envelope
from sleipnir.brokers.redis import RedisBroker, RedisResultStore

url = sys.argv[1]
broker, results = RedisBroker(url), RedisResultStore(url)
for line in sys.stdin:
    order = json.loads(line)
    op, started, answer = order["op"], time.monotonic(), {}
    try:
        if op == "enqueue":
            broker.enqueue([Envelope(id=order["id"], queue="q", body=b"{}")])
        elif op == "enqueue-until-ok":  # as a worker retrying every 0.25 s would
            while True:
                try:
                    broker.enqueue([Envelope(id=order["id"], queue="q", body=b"{}")])
                    break
                except BrokerConnectionError:
                    time.sleep(0.25)
        elif op == "result":
            results.get(order["id"])
        answer["ok"] = True
    except BrokerConnectionError as exc:
        answer["error"] = f"{type(exc).__name__}: {exc}"
    answer["took"] = time.monotonic() - started
    print(json.dumps(answer), flush=True)
'''


class Driver:
    """A client process in the link's client namespace."""

    def __init__(self, link: Link, url: str, directory: Path) -> None:
        script = directory / "driver.py"
        script.write_text(DRIVER)
        env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONUNBUFFERED": "1"}
        self.err = directory / "driver.err"
        with self.err.open("w") as err:
            self.proc = subprocess.Popen(
                link.run_in("client", [sys.executable, str(script), url]),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
            )

    def __call__(self, op: str, **fields: str) -> dict[str, Any]:
        self.send(op, **fields)
        return self.answer()

    def send(self, op: str, **fields: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.proc.stdin.flush()

    def answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # bounded by the test's timeout
        assert line, f"the driver died:\n{self.err.read_text()}"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


def test_a_call_cut_off_by_a_silent_link_fails_in_its_bound_and_never_lands_later(
    link: Link, tmp_path: Path
) -> None:
    redis = redis_py()
    if not REDIS_SERVER.exists():
        if IN_CI:
            pytest.fail(f"{REDIS_SERVER} is not installed", pytrace=False)
        pytest.skip(f"SKIPPED: {REDIS_SERVER} is not installed")
    sock = tmp_path / "redis.sock"
    server = subprocess.Popen(
        link.run_in("server", [
            str(REDIS_SERVER), "--bind", Link.SERVER_IP, "--port", "6379",
            "--unixsocket", str(sock), "--unixsocketperm", "700",
            "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
            "--protected-mode", "no",  # it answers no one but loopback without a password
        ]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    admin = redis.Redis(unix_socket_path=str(sock), socket_timeout=5)
    # 2 s to wait for a reply, 1 s (the default) to connect: each bound can be told apart.
    url = f"redis://{Link.SERVER_IP}:6379/0?prefix=cut&socket_timeout=2"
    driver = Driver(link, url, tmp_path)
    try:
        wait_until(lambda: sock.exists(), 10, "redis-server never opened its socket")
        assert driver("enqueue", id="before").get("ok"), "the link does not work at all"
        assert driver("result", id="before").get("ok")

        link.cut()
        failed = driver("enqueue", id="cut")
        assert "BrokerConnectionError" in failed.get("error", ""), failed
        assert 1.9 <= failed["took"] <= 2.6, f"an outage must fail in socket_timeout: {failed}"
        # Nothing the failed call wrote is still queued in the client's kernel: the
        # connection was reset, not closed gracefully with the request still to send.
        assert link.queued_to_server() == []

        # The result store's connection is as cut off: it reconnects instead of
        # waiting out a reply, so it fails within the connect timeout.
        other = driver("result", id="before")
        assert "BrokerConnectionError" in other.get("error", ""), other
        assert other["took"] <= 1.5, f"a second call of the same outage waited long: {other}"
        again = driver("enqueue", id="cut-again")
        assert "BrokerConnectionError" in again.get("error", ""), again
        assert again["took"] <= 1.5, f"a connect during an outage must fail in ~1 s: {again}"
        assert link.queued_to_server() == []

        # Retrying every 0.25 s, as a worker does; the link returns just after a SYN
        # went out into the void, the worst moment: that connect must give up first.
        driver.send("enqueue-until-ok", id="after")
        wait_until(link.connecting, 10, "the client never tried to connect again")
        link.restore()
        restored = time.monotonic()
        back = driver.answer()
        back_after = time.monotonic() - restored
        assert back.get("ok") and back_after <= 1.6, f"back {back_after:.2f} s after the link"

        # The link carries packets again, and the server has the job sent after it: a
        # request the kernel still held would have been retransmitted by now or soon.
        # Watch the server for a while all the same.
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            assert not admin.exists("cut:job:cut", "cut:job:cut-again"), "a failed enqueue landed"
            time.sleep(0.1)
        assert admin.exists("cut:job:before", "cut:job:after") == 2
    finally:
        driver.close()
        admin.close()
        server.kill()
        server.wait(10)


# -- a stalled server ------------------------------------------------------------------------


def test_a_request_a_stalled_server_reads_after_the_caller_gave_up_is_sent_once_and_does_nothing(
    redis_servers: Servers,
) -> None:
    server = redis_servers()
    assert server.popen is not None
    pid = server.popen.pid
    admin = server.client()
    broker = RedisBroker(server.url("stall") + "&socket_timeout=0.5")
    outcome: dict[str, Any] = {}
    try:
        broker.enqueue([_envelope("before")])  # connected, scripts loaded
        admin.config_resetstat()
        # Stalled for 0.8 s (a long script, a slow fsync): longer than the client waits.
        os.kill(pid, signal.SIGSTOP)
        wake = threading.Timer(0.8, os.kill, (pid, signal.SIGCONT))
        wake.start()
        started = time.monotonic()
        try:
            broker.enqueue([_envelope("late")])
        except BrokerConnectionError as exc:
            outcome["error"] = exc
        outcome["took"] = time.monotonic() - started
        wake.join()

        # The request was in the stalled server's receive buffer, beyond any reset's
        # reach: the server runs it when it wakes. Redis reads what a closed connection
        # had delivered before it drops it: once only the admin's connection is left,
        # every copy sent was served.
        wait_until(
            lambda: admin.info("clients")["connected_clients"] == 1,
            10,
            lambda: f"connections left: {admin.client_list()}; served {_calls(admin)}",
        )
        calls = _calls(admin)
        assert calls.get("evalsha", 0) + calls.get("eval", 0) == 1, f"sent again: {calls}"
        assert "error" in outcome, f"Redis did not answer in time, yet: {outcome}"
        assert outcome["took"] < 0.9, outcome
        assert admin.exists("stall:job:late") == 0, "the enqueue the caller gave up on landed"
        assert admin.exists("stall:job:before") == 1
        broker.enqueue([_envelope("next")])  # and the broker works on
        assert admin.exists("stall:job:next") == 1
    finally:
        os.kill(pid, signal.SIGCONT)
        broker.close()
        admin.close()


# -- the server's clock ----------------------------------------------------------------------


class _HourBehind(SystemClock):
    """The real clock of a host an hour behind the others."""

    def time(self) -> float:
        return super().time() - 3600.0


def test_a_host_whose_clock_is_an_hour_behind_sees_leases_end_by_the_servers_time() -> None:
    redis = redis_py()
    with shared_redis_url() as url:
        ahead, behind = RedisBroker(url), RedisBroker(url, clock=_HourBehind())
        admin = redis.Redis.from_url(url.split("?")[0])
        try:
            behind.enqueue([_envelope("j")])
            (first,) = ahead.reserve(["q"], 1, lease=0.3)

            # By the server's clock the lease ends in 0.3 s; by the late host's, in an hour.
            (second,) = wait_until(
                lambda: behind.reserve(["q"], 1, lease=30.0),
                5,
                "the lease never ran out for the host whose clock is behind",
            )
            assert (second.id, second.attempt, second.lost) == ("j", 2, 1)
            seconds, micros = admin.time()
            server_now = seconds + micros / 1e6
            assert abs(second.lease_until - (server_now + 30.0)) < 2.0, second.lease_until

            # A renewal from the late host cannot move the lease's end into the past.
            assert behind.renew([second], lease=30.0) == [True]
            assert ahead.reserve(["q"], 1, lease=30.0) == []
            assert ahead.ack([first]) == [False]
            assert behind.ack([second]) == [True]
        finally:
            ahead.close()
            behind.close()
            admin.close()


# -- the idle worker's wait ------------------------------------------------------------------


def test_an_idle_wait_after_a_reserve_is_one_blpop_and_stops_at_the_next_due_job(
    redis_servers: Servers,
) -> None:
    server = redis_servers()
    admin = server.client()
    broker = RedisBroker(server.url("idle"))
    queues = ["a", "b", "c"]
    try:
        broker.wait(queues, timeout=0.01)  # loads the look-up script
        assert broker.reserve(queues, 4, 30.0) == []
        admin.config_resetstat()
        started = time.monotonic()
        broker.wait(queues, timeout=0.4)
        assert time.monotonic() - started >= 0.35
        assert _calls(admin) == {"blpop": 1}

        # Without a reserve just before: one look-up script, then the BLPOP.
        admin.config_resetstat()
        broker.wait(queues, timeout=0.1)
        calls = _calls(admin)
        assert (calls.pop("evalsha"), calls.pop("blpop")) == (1, 1), calls
        assert set(calls) <= {"time", "zrange"}, calls  # run inside the script

        # A job due in 0.6 s: the wait ends then, not at its 10 s timeout.
        broker.enqueue([Envelope(id="soon", queue="b", body=b"{}", eta_at=time.time() + 0.6)])
        broker.wait(queues, timeout=10.0)  # the enqueue's wake token
        assert broker.reserve(queues, 4, 30.0) == []
        started = time.monotonic()
        broker.wait(queues, timeout=10.0)
        waited = time.monotonic() - started
        assert 0.2 <= waited <= 1.5, waited
        assert [r.id for r in broker.reserve(queues, 4, 30.0)] == ["soon"]
    finally:
        broker.close()
        admin.close()
