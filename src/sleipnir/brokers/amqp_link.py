"""The connection side of the RabbitMQ backend: URL options, names, one reconnecting link.

This module owns how Sleipnir talks AMQP 0-9-1 through pika: parsing the URL,
naming queues, opening a connection and channel (and opening them again after
a loss, with backoff, answering heartbeats meanwhile), and turning pika's
exceptions into Sleipnir's. It must not know about jobs, leases or dead
letters: that is :mod:`sleipnir.brokers.amqp_topology` and :mod:`sleipnir.brokers.amqp`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pika  # type: ignore[import-untyped]
import pika.exceptions  # type: ignore[import-untyped]

from ..errors import BrokerConnectionError, BrokerError, ConfigurationError
from .base import redact_url

__all__ = ["DELAY_BUCKETS_MS", "Link", "LinkPool", "Names", "Options", "parse_url", "probe"]

DELAY_BUCKETS_MS = tuple(64 * 4**k for k in range(12))
"""Delay queues per work queue, in ms: 64 ms, 256 ms, 1 s, ... about 3.1 days (powers of 4).

A delay is served by hops: the job waits out the largest bucket that fits in
what is left, comes back, and takes the next one, so it is never early and at
most one 64 ms bucket late (see the module docstring of the broker).
"""

QUEUE_TYPES = ("classic", "quorum")


@dataclass(frozen=True, slots=True)
class Options:
    """What the ``amqp://`` URL says beyond where the server is."""

    prefix: str = "sleipnir"
    queue_type: str = "classic"
    park_after: float = 900.0
    """Seconds a delivery may stay unacknowledged before it is parked (see the broker)."""
    connect_timeout: float = 5.0
    heartbeat: float = 30.0


def _number(options: dict[str, str], key: str, default: float, url: str) -> float:
    raw = options.pop(key, None)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{key}={raw!r} in {url!r} is not a number") from None
    if not 0 < value < math.inf:
        raise ConfigurationError(f"{key} in {url!r} must be finite and > 0, not {raw!r}")
    return value


def parse_url(url: str) -> tuple[Any, Options]:
    """pika's connection parameters and Sleipnir's options from an ``amqp(s)://`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise ConfigurationError(f"not an AMQP URL: {url!r}")
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    prefix = options.pop("prefix", "sleipnir")
    if not prefix or any(c in prefix for c in ": \n") or prefix.startswith("amq."):
        raise ConfigurationError(f"invalid queue prefix {prefix!r} in {url!r}")
    queue_type = options.pop("queue_type", "classic")
    if queue_type not in QUEUE_TYPES:
        raise ConfigurationError(
            f"queue_type={queue_type!r} in {url!r}; known: {', '.join(QUEUE_TYPES)}"
        )
    opts = Options(
        prefix=prefix,
        queue_type=queue_type,
        park_after=_number(options, "park_after", 900.0, url),
        connect_timeout=_number(options, "connect_timeout", 5.0, url),
        heartbeat=_number(options, "heartbeat", 30.0, url),
    )
    clean = urlunsplit(parts._replace(query=urlencode(options)))
    try:
        params = pika.URLParameters(clean)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"bad AMQP URL {url!r}: {exc}") from exc
    params.heartbeat = max(1, round(opts.heartbeat))
    params.socket_timeout = opts.connect_timeout
    params.stack_timeout = opts.connect_timeout * 2
    params.blocked_connection_timeout = opts.connect_timeout * 2
    params.connection_attempts = 1
    params.client_properties = {"connection_name": f"sleipnir {prefix}"}
    return params, opts


class Names:
    """The AMQP names of one prefix. ``:`` separates Sleipnir's own suffixes."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.registry = f"{prefix}:queues"

    def check(self, queue: str) -> None:
        if not queue or ":" in queue or len(queue.encode()) > 200:
            raise BrokerError(
                f"queue name {queue!r} cannot be used on RabbitMQ: "
                "it must be 1 to 200 bytes without ':'"
            )

    def work(self, queue: str) -> str:
        return f"{self.prefix}.{queue}"

    def dead(self, queue: str) -> str:
        return f"{self.prefix}.{queue}:dead"

    def parked(self, queue: str) -> str:
        return f"{self.prefix}.{queue}:parked"

    def delay(self, queue: str, bucket_ms: int) -> str:
        return f"{self.prefix}.{queue}:delay:{bucket_ms}ms"

    def running(self, job_id: str) -> str:
        return f"{self.prefix}:running:{job_id}"

    def finished(self, job_id: str) -> str:
        return f"{self.prefix}:finished:{job_id}"

    def all_of(self, queue: str) -> list[str]:
        """Every queue Sleipnir declares for ``queue``."""
        delays = [self.delay(queue, ms) for ms in DELAY_BUCKETS_MS]
        return [self.work(queue), self.dead(queue), self.parked(queue), *delays]


_CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.StreamLostError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.ChannelWrongStateError,
    ConnectionError,
    OSError,
)


class Link:
    """One connection with one channel, opened (again) on demand.

    The channel is in confirm mode, or with ``transactional`` in tx mode (for
    bulk enqueues: one commit, one disk sync, for the whole batch; messages the
    broker returned as unroutable are collected in ``returned``).

    ``generation`` goes up with every new channel: a delivery tag is only
    meaningful on the channel that received it, so tokens carry the generation
    and a token of an older one is stale. After a failure to connect, the next
    attempt waits out an exponential backoff (0.1 s doubling to 5 s); calls
    meanwhile fail at once with :class:`BrokerConnectionError` instead of hanging.

    pika answers heartbeats only while a call runs on the connection, and a busy
    worker may not call for longer than the server waits (two heartbeats) before
    it drops the connection and hands the jobs to someone else. A daemon thread
    therefore takes the lock every third of a heartbeat, when no call holds it,
    and lets pika do its I/O.
    """

    def __init__(self, params: Any, url: str, role: str, *, transactional: bool = False) -> None:
        self.params = params
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
        self._backoff = 0.0
        self._next_try_at = 0.0
        self._closed = threading.Event()
        self._keeper: threading.Thread | None = None

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
            self.drop()
        return self.is_open

    def channel(self) -> Any:
        """The open channel, connecting first if there is none (or it died while idle)."""
        if self.alive():
            return self.ch
        self.drop()
        now = time.monotonic()
        if now < self._next_try_at:
            raise BrokerConnectionError(
                f"RabbitMQ at {self.url} unreachable; next try in {self._next_try_at - now:.1f} s"
            )
        try:
            conn = pika.BlockingConnection(self.params)
            try:
                ch = conn.channel()
                if self.transactional:
                    ch.tx_select()
                    ch.add_on_return_callback(self._on_return)
                else:
                    ch.confirm_delivery()
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.close()
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
                        self.drop()
            finally:
                self.lock.release()

    def close(self) -> None:
        """Close for good: the connection and the heartbeat thread."""
        self._closed.set()
        with self.lock:
            self.drop()

    def _on_return(self, ch: Any, method: Any, props: Any, body: bytes) -> None:
        self.returned.append(f"{props.message_id} to {method.routing_key!r}: {method.reply_text}")

    def _failed(self) -> None:
        self._backoff = min(5.0, max(0.1, self._backoff * 2))
        self._next_try_at = time.monotonic() + self._backoff

    def scratch(self) -> Any:
        """A second, short-lived channel on the same connection (closing it requeues its gets)."""
        self.channel()
        return self.conn.channel()

    def drop(self) -> None:
        """Forget the connection (closing it if it is still open)."""
        conn, self.conn, self.ch = self.conn, None, None
        if conn is not None and conn.is_open:
            with contextlib.suppress(Exception):
                conn.close()

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
            self.drop()
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
    def take(self, timeout: float) -> Iterator[Link]:
        """A link for this thread alone until the block ends."""
        with self._cond:
            deadline = time.monotonic() + timeout
            while not self._free and len(self._all) >= self._size:
                left = deadline - time.monotonic()
                if left <= 0 or not self._cond.wait(left):
                    raise BrokerConnectionError(
                        f"all {self._size} RabbitMQ producer connections stayed busy "
                        f"for {timeout:.0f} s"
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

    def close(self) -> None:
        with self._cond:
            links, self._all, self._free = self._all, [], []
        for link in links:
            link.close()


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
