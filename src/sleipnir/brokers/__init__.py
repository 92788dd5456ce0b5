"""Broker backends, chosen by URL scheme: the one registry of schemes.

:data:`BACKENDS` says, for each backend, the URL schemes it answers to, how to open
its broker and (where it keeps results) its result store, whether its server is
reached from many hosts, and how it diagnoses itself. Everything that switches on a
URL's scheme asks here: :func:`broker_from_url`, :func:`results_from_url`, the App's
default result store, and ``sleipnir doctor``.

Each backend lives in its own module and is imported only when a URL asks for it, so
a user of the embedded broker never needs a Redis client. Its checks live beside it
(``<backend>_checks``), import no client library and are imported here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..checks import Check, Deployment
from ..clock import Clock
from ..errors import ConfigurationError
from ..results import ResultStore
from . import amqp_checks, memory_checks, postgres_checks, redis_checks, sqlite_checks
from .base import Broker, redact_url

__all__ = [
    "BACKENDS",
    "Backend",
    "backend_for",
    "broker_from_url",
    "find_backend",
    "results_from_url",
]

Diagnose = Callable[[Callable[[], Broker], str, Deployment], list[Check]]
"""``diagnose(open_broker, url, about)``: the backend's checks of the broker at ``url``.
It calls ``open_broker`` only if it needs the open broker, and reports a broker it cannot
reach as a failed check, never as an exception."""


@dataclass(frozen=True, slots=True)
class Backend:
    """One backend: its URL schemes and what a URL of them opens."""

    name: str
    """For people: ``Redis``, ``SQLite``."""
    schemes: tuple[str, ...]
    example: str
    """A URL of it, as the error for an unknown scheme lists it."""
    open_broker: Callable[[str, Clock], Broker]
    open_results: Callable[[str, Clock], ResultStore] | None
    """``None``: it keeps no results (the App then stores them elsewhere)."""
    spans_hosts: bool
    """Whether processes on many hosts reach the same server (a file, a unix socket or
    one process's memory is seen from this host only)."""
    diagnose: Diagnose

    @property
    def keeps_results(self) -> bool:
        return self.open_results is not None


def _need(module: str, extra: str) -> None:
    """Raise a ConfigurationError naming the extra to install when a client library is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigurationError(
            f"this URL needs the {module!r} package: pip install 'sleipnir[{extra}]'"
        )


def _memory_broker(url: str, clock: Clock) -> Broker:
    from .memory import MemoryBroker

    return MemoryBroker(url, clock=clock)


def _memory_results(url: str, clock: Clock) -> ResultStore:
    from .memory import MemoryResultStore

    return MemoryResultStore(url, clock=clock)


def _sqlite_broker(url: str, clock: Clock) -> Broker:
    from .sqlite import SQLiteBroker

    return SQLiteBroker(url, clock=clock)


def _sqlite_results(url: str, clock: Clock) -> ResultStore:
    from .sqlite import SQLiteResultStore

    return SQLiteResultStore(url, clock=clock)


def _redis_broker(url: str, clock: Clock) -> Broker:
    _need("redis", "redis")
    from .redis import RedisBroker

    return RedisBroker(url, clock=clock)


def _redis_results(url: str, clock: Clock) -> ResultStore:
    _need("redis", "redis")
    from .redis import RedisResultStore

    return RedisResultStore(url, clock=clock)


def _postgres_broker(url: str, clock: Clock) -> Broker:
    _need("psycopg", "postgres")
    from .postgres import PostgresBroker

    return PostgresBroker(url, clock=clock)


def _postgres_results(url: str, clock: Clock) -> ResultStore:
    _need("psycopg", "postgres")
    from .postgres import PostgresResultStore

    return PostgresResultStore(url, clock=clock)


def _amqp_broker(url: str, clock: Clock) -> Broker:
    _need("pika", "amqp")
    from .amqp import AMQPBroker

    return AMQPBroker(url, clock=clock)


BACKENDS = (
    Backend(
        "memory", ("memory",), "memory://", _memory_broker, _memory_results, False,
        memory_checks.diagnose,
    ),
    Backend(
        "SQLite", ("sqlite",), "sqlite:///path", _sqlite_broker, _sqlite_results, False,
        sqlite_checks.diagnose,
    ),
    Backend(
        "Redis", ("redis", "rediss"), "redis://host:port/db", _redis_broker, _redis_results,
        True, redis_checks.diagnose,
    ),
    Backend(
        "Redis", ("unix",), "unix:///path/redis.sock", _redis_broker, _redis_results, False,
        redis_checks.diagnose,
    ),
    Backend(
        "PostgreSQL", ("postgresql", "postgres"), "postgresql://host/db", _postgres_broker,
        _postgres_results, True, postgres_checks.diagnose,
    ),
    Backend(
        "RabbitMQ", ("amqp", "amqps"), "amqp://user:password@host:port/vhost", _amqp_broker,
        None, True, amqp_checks.diagnose,
    ),
)  # fmt: skip
"""Every backend, in the order the error for an unknown scheme lists them."""

_BY_SCHEME = {scheme: backend for backend in BACKENDS for scheme in backend.schemes}


def _known() -> str:
    return ", ".join(
        f"{b.example} ({'/'.join(b.schemes)}{'' if b.keeps_results else ', broker only'})"
        for b in BACKENDS
    )


def find_backend(url: str) -> Backend | None:
    """The backend of the URL's scheme, or ``None`` when no backend has it."""
    return _BY_SCHEME.get(urlsplit(url).scheme)


def backend_for(url: str, what: str = "backend") -> Backend:
    """The backend of the URL's scheme; an unknown scheme is a ConfigurationError listing
    the known ones. ``what`` names what was asked for in that error."""
    backend = find_backend(url)
    if backend is None:
        raise ConfigurationError(
            f"no {what} for URL scheme {urlsplit(url).scheme!r} in {redact_url(url)!r}; "
            f"known: {_known()}"
        )
    return backend


def broker_from_url(url: str, clock: Clock) -> Broker:
    """Build the broker a URL names (``memory://``, ``sqlite:///path``, ``redis://``, ``amqp://``)."""
    return backend_for(url, "broker").open_broker(url, clock)


def results_from_url(url: str, clock: Clock) -> ResultStore:
    """Build the result store a URL names (``memory://``, ``sqlite:///path``, ``redis://``)."""
    backend = backend_for(url, "result store")
    if backend.open_results is None:
        raise ConfigurationError(
            f"no result store for URL scheme {urlsplit(url).scheme!r} in {redact_url(url)!r}: "
            f"{backend.name} keeps no results; known: {_known()}"
        )
    return backend.open_results(url, clock)
