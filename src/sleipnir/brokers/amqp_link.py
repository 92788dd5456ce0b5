"""The connection side of the RabbitMQ backend: URL options, names, one reconnecting link.

This module owns how Sleipnir talks AMQP 0-9-1 through pika: parsing the URL,
naming queues, opening a connection and channel (and opening them again after
a loss, with backoff, answering heartbeats meanwhile), bounding every wait for
the server, and turning pika's exceptions into Sleipnir's. It must not know
about jobs, leases or dead letters: that is :mod:`sleipnir.brokers.amqp_topology`
and :mod:`sleipnir.brokers.amqp`.

Bounded waits. A link that drops packets silently gives TCP nothing to report
for many minutes, and pika notices it only after two missed heartbeats plus
5 s (65 s with a 30 s heartbeat). So:

* every wait of pika for the server (an RPC's answer, a publisher confirm,
  flushing what it wrote) is bounded by ``timeout`` and, inside a call that has
  a deadline, by what is left of it (:class:`_Connection`);
* a wait that runs out *aborts* the connection: the socket is closed with
  ``SO_LINGER {1, 0}``, so the kernel throws away what was not yet sent (and
  resets the connection) instead of sending it when the link comes back. A
  publish the caller was told failed can therefore never be stored later;
* the kernel itself gives up on a connection whose sent data stays unacknowledged
  for ``timeout`` (``TCP_USER_TIMEOUT``) and probes idle ones (keepalive), so an
  idle pooled connection that died is noticed before a call picks it up;
* opening a connection is bounded by ``connect_timeout`` for the TCP handshake
  and by the call's deadline for the whole of it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pika  # type: ignore[import-untyped]
import pika.exceptions  # type: ignore[import-untyped]

from ..errors import BrokerConnectionError, BrokerError
from .amqp_url import DELAY_BUCKETS_MS, Names, Options, parse_url, tcp_options
from .base import redact_url

__all__ = [
    "DELAY_BUCKETS_MS",
    "Link",
    "LinkPool",
    "Names",
    "NoAnswer",
    "Options",
    "parse_url",
    "probe",
    "tcp_options",
]


class NoAnswer(pika.exceptions.AMQPConnectionError):  # type: ignore[misc]
    """The server did not answer in time; the connection was aborted (unsent data dropped)."""


_CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.StreamLostError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.ChannelWrongStateError,
    ConnectionError,
    OSError,
)

_LINGER_ABORT = struct.pack("ii", 1, 0)
"""``SO_LINGER {on, 0 s}``: closing the socket resets the connection and drops unsent data."""


class _Connection(pika.BlockingConnection):  # type: ignore[misc]
    """pika's blocking connection, with every wait for the server bounded.

    pika's blocking calls all wait in ``_flush_output`` (an RPC's answer, a
    publisher confirm, writing out what was sent); each wait here arms a timer on
    the connection's own I/O loop first. When it fires, the connection is aborted:
    the wait raises :class:`NoAnswer` and whatever was not yet sent is dropped
    (the socket lingers for 0 s). ``bound()`` says how long the next wait may last.

    This leans on three internals of pika (``_flush_output``, the adapter's timers
    and ``_terminate_stream``, which pika's own heartbeat checker uses the same
    way); the partition tests fail if an upgrade of pika breaks them.
    """

    def __init__(self, params: Any, bound: Callable[[], float]) -> None:
        super().__init__(params)
        self.bound = bound
        transport = getattr(self._impl, "_transport", None)
        sock = getattr(transport, "_sock", None)
        if sock is None:  # pragma: no cover - an upgrade of pika moved it
            self.close()
            raise BrokerError("this version of pika hides its socket; Sleipnir cannot bound it")
        # From now on every close of this socket, pika's own (a missed heartbeat) too,
        # is an abort: unsent data is dropped, never delivered late.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)

    def _flush_output(self, *waiters: Callable[[], bool]) -> None:
        left = self.bound()
        if left <= 0:
            # The call ran out of time before this wait: what it wrote must not land.
            self.abort("the call's time ran out", run=False)
        impl = self._impl
        timer = impl._adapter_call_later(max(0.0, left), self._no_answer)
        try:
            super()._flush_output(*waiters)
        finally:
            with contextlib.suppress(Exception):  # the I/O loop may be closed by now
                impl._adapter_remove_timeout(timer)

    def _no_answer(self) -> None:
        self.abort("no answer in time", run=False)  # the wait that armed it runs the abort

    def abort(self, why: str, *, run: bool = True) -> None:
        """End the connection at once, dropping what was not sent; idempotent.

        ``run``: let pika carry the abort out now (close and reset the socket), which
        a wait in progress would otherwise do.
        """
        if self.is_closed:
            return
        with contextlib.suppress(Exception):  # already being torn down
            self._impl._terminate_stream(NoAnswer(why))
        if run:
            with contextlib.suppress(Exception):  # it raises the abort, as it should
                super()._flush_output(self._closed_result.is_ready)


class Link:
    """One connection with one channel, opened (again) on demand.

    The channel is in confirm mode, or with ``transactional`` in tx mode (for
    bulk enqueues: one commit, one disk sync, for the whole batch; messages the
    broker returned as unroutable are collected in ``returned``).

    ``generation`` goes up with every new channel: a delivery tag is only
    meaningful on the channel that received it, so tokens carry the generation
    and a token of an older one is stale. After a failure to connect, the next
    attempt waits out a short exponential backoff (0.1 s doubling to 0.5 s);
    calls meanwhile fail at once with :class:`BrokerConnectionError` instead of
    hanging. The backoff is short so that a worker (which pauses 0.5 s after a
    failed reserve) is never held back by it once the server is back.

    Every use goes through :meth:`call`: the lock, a deadline, and the mapping of
    pika's exceptions. Every wait for the server is bounded by ``timeout`` and
    by what is left of the call's deadline (module docstring).

    pika answers heartbeats only while a call runs on the connection, and a busy
    worker may not call for longer than the server waits (two heartbeats) before
    it drops the connection and hands the jobs to someone else. A daemon thread
    therefore takes the lock every third of a heartbeat, when no call holds it,
    and lets pika do its I/O.
    """

    def __init__(
        self,
        params: Any,
        url: str,
        role: str,
        *,
        timeout: float = 5.0,
        transactional: bool = False,
    ) -> None:
        self.params = params
        self.timeout = timeout
        self.transactional = transactional
        # pika logs every connection's opening and closing at INFO, and a lost
        # connection as a dozen ERROR lines with tracebacks; every failure reaches the
        # caller as a Sleipnir exception with pika's text, which the worker logs once.
        # A level the application set for "pika" is left alone.
        if logging.getLogger("pika").level == logging.NOTSET:
            logging.getLogger("pika").setLevel(logging.CRITICAL)
        self.returned: list[str] = []
        self.url = redact_url(url)
        self.role = role
        self.lock = threading.RLock()
        self.conn: Any = None
        self.ch: Any = None
        self.generation = 0
        self.until: float | None = None
        """The deadline (monotonic) of the call running now, if it has one."""
        self.broke = False
        """The last call failed because its open connection broke under it (a reset, the
        server closing it), not because a wait ran out or no connection could be
        opened: asking once more, on a new connection, may well succeed."""
        self._depth = 0
        self._backoff = 0.0
        self._next_try_at = 0.0
        self._closed = threading.Event()
        self._keeper: threading.Thread | None = None

    def deadline(self) -> float:
        """A deadline ``timeout`` from now, for :meth:`call`."""
        return time.monotonic() + self.timeout

    def _bound(self) -> float:
        """How long the next wait for the server may last."""
        if self.until is None:
            return self.timeout
        return min(self.timeout, self.until - time.monotonic())

    @contextlib.contextmanager
    def call(self, doing: str, until: float | None = None) -> Iterator[None]:
        """One use of the link: its lock, the deadline ``until``, pika's errors mapped.

        Without ``until`` only each wait is bounded (by ``timeout``): for the admin
        calls that may read many messages from a healthy server. A nested call keeps
        the deadline of the outer one.
        """
        wait = self.timeout if until is None else until - time.monotonic()
        if wait <= 0 or not self.lock.acquire(timeout=wait):
            raise BrokerConnectionError(
                f"RabbitMQ at {self.url}: the {self.role} connection stayed busy "
                f"past the {self.timeout:g} s bound while {doing}"
            )
        outermost = self._depth == 0
        self._depth += 1
        try:
            if outermost:
                self.broke = False
                self.until = until
            with self.errors(doing):
                yield
        finally:
            self._depth -= 1
            if outermost:
                self.until = None
            self.lock.release()

    @property
    def is_open(self) -> bool:
        return bool(self.ch is not None and self.ch.is_open and self.conn.is_open)

    def alive(self) -> bool:
        """Whether the connection is still up, found out without a round trip.

        pika learns that the server closed a connection (a restart sends
        ``connection.close`` and then ends the stream) only when it next reads
        from it. A non-blocking read here notices such a connection while it sat
        idle, before a call fails on it; it is dropped, so the next call opens a new one.
        """
        if not self.is_open:
            return False
        try:
            self.conn.process_data_events(time_limit=0)
        except Exception:  # any failure means the connection is gone
            self.abort()
        return self.is_open

    def channel(self) -> Any:
        """The open channel, connecting first if there is none (or it died while idle)."""
        if self.alive():
            return self.ch
        self.abort()
        now = time.monotonic()
        if now < self._next_try_at:
            raise BrokerConnectionError(
                f"RabbitMQ at {self.url} unreachable; next try in {self._next_try_at - now:.1f} s"
            )
        params = self.params
        left = self._bound()
        if left < self.timeout:
            # The handshake may not outlast the call: no more than what is left of it.
            if left <= 0:
                raise BrokerConnectionError(
                    f"RabbitMQ at {self.url}: no time left to connect (bound {self.timeout:g} s)"
                )
            params = copy.copy(params)
            params.socket_timeout = min(params.socket_timeout or left, left)
            params.stack_timeout = min(params.stack_timeout or left, left)
        try:
            conn = _Connection(params, self._bound)
            try:
                ch = conn.channel()
                if self.transactional:
                    ch.tx_select()
                    ch.add_on_return_callback(self._on_return)
                else:
                    ch.confirm_delivery()
            except BaseException:
                conn.abort("failed while opening")
                raise
        except pika.exceptions.ProbableAuthenticationError as exc:
            self._failed()
            raise BrokerConnectionError(f"RabbitMQ at {self.url} refused the login: {exc}") from exc
        except Exception as exc:
            # Anything that stops a connection from opening (refused, timed out in the
            # TCP or AMQP handshake, vhost access) means: not reachable now. pika's
            # handshake timeouts are not even AMQPErrors.
            self._failed()
            raise BrokerConnectionError(f"RabbitMQ at {self.url} unreachable: {exc!r}") from exc
        self.conn, self.ch = conn, ch
        self.generation += 1
        self._backoff = 0.0
        if self._keeper is None:
            self._keeper = threading.Thread(
                target=self._keep_alive, name=f"sleipnir-amqp-{self.role}", daemon=True
            )
            self._keeper.start()
        return ch

    def ping(self) -> None:
        """One round trip on the channel: everything sent before it has reached the server.

        An ack has no answer in AMQP; a passive declare of ``amq.direct`` (which
        every vhost has) after it tells that the server got it, and that the
        channel, and with it every delivery it holds, is still there.
        """
        self.ch.exchange_declare("amq.direct", passive=True)

    def _keep_alive(self) -> None:
        interval = max(0.5, (self.params.heartbeat or 30) / 3)
        while not self._closed.wait(interval):
            if not self.lock.acquire(blocking=False):
                continue  # a call is running: it does the I/O
            try:
                if self.is_open:
                    try:
                        self.conn.process_data_events(time_limit=0)
                    except Exception:  # any failure: the next call reconnects
                        self.abort()
            finally:
                self.lock.release()

    def close(self, until: float | None = None) -> None:
        """Close for good: the connection (cleanly if it answers by ``until``) and the
        heartbeat thread."""
        self._closed.set()
        with self.lock:
            self.until = self.deadline() if until is None else until
            try:
                self.drop()
            finally:
                self.until = None

    def _on_return(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        self.returned.append(f"{props.message_id} to {method.routing_key!r}: {method.reply_text}")

    def _failed(self) -> None:
        self._backoff = min(0.5, max(0.1, self._backoff * 2))
        self._next_try_at = time.monotonic() + self._backoff

    def scratch(self) -> Any:
        """A second, short-lived channel on the same connection (closing it requeues its gets)."""
        self.channel()
        return self.conn.channel()

    def drop(self) -> None:
        """Forget the connection, closing it cleanly if it is open (each wait bounded)."""
        conn, self.conn, self.ch = self.conn, None, None
        if conn is not None and conn.is_open:
            try:
                conn.close()
            except Exception:  # it broke, or did not answer in time (then it is aborted)
                conn.abort("failed to close")

    def abort(self) -> None:
        """Forget the connection, aborting it: what it had not sent is dropped, not sent later."""
        conn, self.conn, self.ch = self.conn, None, None
        if conn is not None:
            conn.abort("aborted")

    @contextlib.contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """Turn pika's exceptions into Sleipnir's; a lost connection or channel is dropped."""
        try:
            yield
        except pika.exceptions.UnroutableError as exc:
            raise BrokerError(
                f"RabbitMQ at {self.url} could not route a message while {doing} "
                "(was a queue deleted?); nothing after it was stored"
            ) from exc
        except pika.exceptions.NackError as exc:
            raise BrokerError(
                f"RabbitMQ at {self.url} refused a message while {doing} "
                "(a queue length limit?); nothing after it was stored"
            ) from exc
        except pika.exceptions.ChannelClosedByBroker as exc:
            # The server closed the channel: its deliveries are back in their queues.
            self.drop()
            raise BrokerError(
                f"RabbitMQ at {self.url} closed the channel while {doing}: "
                f"{exc.reply_code} {exc.reply_text}"
            ) from exc
        except (*_CONNECTION_ERRORS, pika.exceptions.AMQPError) as exc:
            self.abort()
            if isinstance(exc, NoAnswer):
                raise BrokerConnectionError(
                    f"no answer from RabbitMQ at {self.url} within the {self.timeout:g} s "
                    f"bound while {doing}; the connection was aborted and what it had not "
                    "sent was dropped"
                ) from exc
            self.broke = True
            raise BrokerConnectionError(
                f"lost RabbitMQ at {self.url} while {doing}: {exc!r}"
            ) from exc


class LinkPool:
    """Up to ``size`` links, each lent to one thread at a time (producers in many threads).

    A publish waits for the broker's confirm (a disk write); threads that each
    have a connection wait for it side by side instead of in one line.
    """

    def __init__(self, make: Callable[[], Link], size: int) -> None:
        self._make = make
        self._size = size
        self._free: list[Link] = []
        self._all: list[Link] = []
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def take(self, until: float) -> Iterator[Link]:
        """A link for this thread alone until the block ends; waits until ``until`` at most."""
        with self._cond:
            while not self._free and len(self._all) >= self._size:
                left = until - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    raise BrokerConnectionError(
                        f"all {self._size} RabbitMQ producer connections stayed busy "
                        "until the call's deadline"
                    )
            if self._free:
                link = self._free.pop()
            else:
                link = self._make()
                self._all.append(link)
        try:
            with link.lock:
                yield link
        finally:
            with self._cond:
                self._free.append(link)
                self._cond.notify()

    def close(self, until: float | None = None) -> None:
        """Close every link; those that do not answer by ``until`` are aborted."""
        with self._cond:
            links, self._all, self._free = self._all, [], []
        for link in links:
            link.close(until)


def probe(link: Link, queue: str) -> str:
    """Whether ``queue`` is there: ``"ok"``, ``"missing"`` or ``"locked"``.

    ``"locked"``: it is exclusive to another connection. Asked on a scratch
    channel, since a failed passive declare closes its channel.
    """
    ch = link.scratch()
    try:
        ch.queue_declare(queue, passive=True)
        return "ok"
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return "missing"
        if exc.reply_code == 405:
            return "locked"
        raise
    finally:
        if ch.is_open:
            with contextlib.suppress(Exception):
                ch.close()
