"""Hosts in network namespaces on one bridge, and a silent cut of one host's link.

The layout, made by :meth:`Network.create` (every name carries a random tag, so two
runs on one machine never meet)::

    <tag>-brk  the broker host: a bridge ``br0`` holding 10.77.0.1/24 (the servers
               listen there), with one port per host
    <tag>-w1   a host: ``eth0`` (10.77.0.11/24), a veth whose peer is the bridge port
    <tag>-w2   ``p-w1`` in <tag>-brk; likewise ``p-w2`` for 10.77.0.12, and so on
    ...

Nothing is added to the machine's own network namespace: the servers and hosts talk
over the bridge only, and the test process reaches the servers through their Unix
sockets (a Unix socket is a file, not bound to a network namespace).

**A cut** turns the host's bridge port to the ``disabled`` state: the bridge drops
every frame from and to that port, ARP included, in both directions, and tells
neither side. The host's own interface stays up with its carrier on, so its
processes see what a pulled cable two switches away looks like: writes that
vanish, no error, no reset. Restoring sets the port back to ``forwarding``.

Why a bridge port and not ``tc qdisc ... netem loss 100%`` on both veth ends: the
kernels this suite runs on may be built without ``sch_netem`` (this one is:
``CONFIG_NET_SCH_NETEM`` is not set), and there is no iptables; a disabled bridge
port needs only the bridge driver and iproute2, and drops the same frames.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from functools import cache

BROKER_IP = "10.77.0.1"
"""The broker host's address on the bridge; the private servers listen there."""

_PREFIX = 24
_FORWARDING, _DISABLED = "3", "0"


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["ip", *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


def _bridge(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["bridge", *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30
    )
    if done.returncode != 0:
        raise RuntimeError(f"bridge {' '.join(args)} failed: {done.stderr.strip()}")
    return done


@cache
def unavailable() -> str | None:
    """Why hosts in network namespaces cannot be made here, or ``None`` when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for program in ("ip", "bridge", "ss"):
        if shutil.which(program) is None:
            return f"`{program}` (iproute2) is not installed"
    probe = f"sp{secrets.token_hex(3)}-probe"
    try:
        done = _ip("netns", "add", probe, check=False)
        if done.returncode != 0:
            return f"`ip netns add` failed: {done.stderr.strip()}"
        done = _ip("-n", probe, "link", "add", "br0", "type", "bridge", check=False)
        if done.returncode != 0:
            return f"no bridge in a network namespace: {done.stderr.strip()}"
    finally:
        _ip("netns", "del", probe, check=False)
    return None


@dataclass(frozen=True)
class Host:
    name: str
    ns: str
    ip: str
    port: str
    """Its port on the broker host's bridge."""


@dataclass
class Network:
    """The broker host and its hosts; see the module docstring."""

    tag: str
    broker_ns: str
    hosts: dict[str, Host] = field(default_factory=dict)
    _made: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, names: list[str]) -> Network:
        """The broker host and one host per name, all linked; torn down if any step fails."""
        tag = f"sp{secrets.token_hex(3)}"
        net = cls(tag, f"{tag}-brk")
        try:
            net._add_ns(net.broker_ns)
            brk = net.broker_ns
            _ip("-n", brk, "link", "set", "lo", "up")
            _ip("-n", brk, "link", "add", "br0", "type", "bridge")
            _ip("-n", brk, "addr", "add", f"{BROKER_IP}/{_PREFIX}", "dev", "br0")
            _ip("-n", brk, "link", "set", "br0", "up")
            for i, name in enumerate(names):
                host = Host(name, f"{tag}-{name}", f"10.77.0.{11 + i}", f"p-{name}")
                net._add_ns(host.ns)
                # Made inside the namespaces: no interface ever shows in the machine's own.
                peer = ("peer", "name", "eth0", "netns", host.ns)
                _ip("-n", brk, "link", "add", host.port, "type", "veth", *peer)
                _ip("-n", brk, "link", "set", host.port, "master", "br0")
                _ip("-n", brk, "link", "set", host.port, "up")
                _ip("-n", host.ns, "link", "set", "lo", "up")
                _ip("-n", host.ns, "addr", "add", f"{host.ip}/{_PREFIX}", "dev", "eth0")
                _ip("-n", host.ns, "link", "set", "eth0", "up")
                net.hosts[name] = host
        except BaseException:
            net.close()
            raise
        return net

    def _add_ns(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._made.append(ns)

    def ns(self, host: str) -> str:
        return self.broker_ns if host == "brk" else self.hosts[host].ns

    def exec_argv(self, host: str, argv: list[str]) -> list[str]:
        """``argv`` run on ``host`` ("brk" for the broker host)."""
        return ["ip", "netns", "exec", self.ns(host), *argv]

    # -- the link ---------------------------------------------------------------------

    def cut(self, host: str) -> float:
        """Drop every frame to and from ``host``, silently; the time the cut was in force."""
        self._port_state(host, _DISABLED)
        return time.time()

    def restore(self, host: str) -> float:
        """Forward ``host``'s frames again; the time just before the link came back."""
        at = time.time()
        self._port_state(host, _FORWARDING)
        return at

    def _port_state(self, host: str, state: str) -> None:
        _bridge("-n", self.broker_ns, "link", "set", "dev", self.hosts[host].port, "state", state)

    def restore_all(self) -> None:
        """Every link forwarding again (after a test that failed with a host cut off)."""
        for host in self.hosts:
            self._port_state(host, _FORWARDING)

    def is_cut(self, host: str) -> bool:
        """The port is still disabled (nothing turned it back on behind the test's back)."""
        shown = _bridge("-n", self.broker_ns, "link", "show", "dev", self.hosts[host].port)
        return " state disabled " in shown.stdout

    def unsent(self, host: str) -> list[str]:
        """``host``'s TCP sockets to the broker host that still hold bytes not yet delivered.

        Orphans count too: a socket its process closed keeps its send buffer and keeps
        retransmitting it, which is how a write the caller gave up on can land later.
        """
        done = subprocess.run(
            self.exec_argv(host, ["ss", "-tanH", "dst", BROKER_IP]),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            raise RuntimeError(f"ss on {host} failed: {done.stderr.strip()}")
        out = []
        for line in done.stdout.splitlines():
            fields = line.split()
            # State Recv-Q Send-Q Local Peer; a SYN not yet answered counts its one byte.
            if len(fields) >= 3 and fields[2] != "0" and fields[0] != "SYN-SENT":
                out.append(line.strip())
        return out

    # -- teardown ---------------------------------------------------------------------

    def kill_hosts(self) -> None:
        """SIGKILL every process left on the hosts (all started by the test); not the servers."""
        self._kill([h.ns for h in self.hosts.values()])

    def kill_all(self) -> None:
        """SIGKILL every process left in this network's namespaces (all started here)."""
        self._kill(self._made)

    def _kill(self, namespaces: list[str]) -> None:
        for ns in namespaces:
            done = _ip("netns", "pids", ns, check=False)
            for pid in done.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)

    def close(self) -> None:
        """Kill what still runs in the namespaces, then delete them (and so the links)."""
        self.kill_all()
        deadline = time.monotonic() + 10.0
        for ns in reversed(self._made):
            # A namespace outlives its deletion while a process still sits in it.
            while _ip("netns", "pids", ns, check=False).stdout.split():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            _ip("netns", "del", ns, check=False)
        self._made.clear()
