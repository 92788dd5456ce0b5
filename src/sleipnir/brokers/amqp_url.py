"""The RabbitMQ URL and its options (prefix, queue type, timeouts), the socket options they
set, and the names of the queues Sleipnir declares.
"""

from __future__ import annotations

import math
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import pika  # type: ignore[import-untyped]
import pika.exceptions  # type: ignore[import-untyped]

from ..errors import BrokerError, ConfigurationError

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
    connect_timeout: float = 1.5
    """Seconds for the TCP handshake of a new connection.

    Not 1 s: Linux sends its first SYN again after 1 s, so a timeout of exactly 1 s
    gives up just when a SYN lost to a link that has come back meanwhile would be
    answered; 1.5 s waits for that second SYN, and a worker reconnects within about
    1 s of the link's return instead of 1.5 s."""
    timeout: float = 5.0
    """Seconds a call of the worker's or a producer's may take in all, and any wait
    for the server may last (see the module docstring)."""
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
        connect_timeout=_number(options, "connect_timeout", 1.5, url),
        timeout=_number(options, "timeout", 5.0, url),
        heartbeat=_number(options, "heartbeat", 30.0, url),
    )
    clean = urlunsplit(parts._replace(query=urlencode(options)))
    try:
        params = pika.URLParameters(clean)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"bad AMQP URL {url!r}: {exc}") from exc
    params.heartbeat = max(1, round(opts.heartbeat))
    # Derived from Sleipnir's options unless the URL names pika's own (URL options win).
    defaults: dict[str, Any] = {
        "socket_timeout": opts.connect_timeout,
        "stack_timeout": opts.timeout,
        "blocked_connection_timeout": opts.timeout,
        "tcp_options": tcp_options(opts.timeout),
    }
    for name, value in defaults.items():
        if name not in options:
            setattr(params, name, value)
    params.connection_attempts = 1
    params.client_properties = {"connection_name": f"sleipnir {prefix}"}
    return params, opts


def tcp_options(timeout: float) -> dict[str, int]:
    """What the kernel is told about every connection (pika's ``tcp_options``).

    ``TCP_USER_TIMEOUT``: a connection whose sent data stays unacknowledged for
    ``timeout`` is closed by the kernel, its unsent data dropped. Keepalive probes
    an idle connection after ``timeout`` of silence, every second, so a dead idle
    one is found within about twice ``timeout``.
    """
    seconds = max(1, math.ceil(timeout))
    options = {"TCP_KEEPIDLE": seconds, "TCP_KEEPINTVL": 1, "TCP_KEEPCNT": seconds}
    if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux; pika knows its number elsewhere too
        options["TCP_USER_TIMEOUT"] = max(1, round(timeout * 1000))
    return options


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
