"""Broker backends, chosen by URL scheme.

Each backend lives in its own module and is imported only when a URL asks
for it, so a user of the embedded broker never needs a Redis client.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ..clock import Clock
from ..errors import ConfigurationError
from ..results import ResultStore
from .base import Broker, redact_url

__all__ = ["broker_from_url", "results_from_url"]


_KNOWN = (
    "memory://, sqlite:///path, redis://host:port/db, postgresql://host/db, "
    "amqp://user:password@host:port/vhost (broker only)"
)


def _need(module: str, extra: str) -> None:
    """Raise a ConfigurationError naming the extra to install when a client library is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigurationError(
            f"this URL needs the {module!r} package: pip install 'sleipnir[{extra}]'"
        )


def broker_from_url(url: str, clock: Clock) -> Broker:
    """Build the broker a URL names (``memory://``, ``sqlite:///path``, ``redis://``, ``amqp://``)."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from .memory import MemoryBroker

        return MemoryBroker(url, clock=clock)
    if scheme == "sqlite":
        from .sqlite import SQLiteBroker

        return SQLiteBroker(url, clock=clock)
    if scheme in ("redis", "rediss", "unix"):
        _need("redis", "redis")
        from .redis import RedisBroker

        return RedisBroker(url, clock=clock)
    if scheme in ("postgresql", "postgres"):
        _need("psycopg", "postgres")
        from .postgres import PostgresBroker

        return PostgresBroker(url, clock=clock)
    if scheme in ("amqp", "amqps"):
        _need("pika", "amqp")
        from .amqp import AMQPBroker

        return AMQPBroker(url, clock=clock)
    raise ConfigurationError(
        f"no broker for URL scheme {scheme!r} in {redact_url(url)!r}; known: {_KNOWN}"
    )


def results_from_url(url: str, clock: Clock) -> ResultStore:
    """Build the result store a URL names (``memory://``, ``sqlite:///path``)."""
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from .memory import MemoryResultStore

        return MemoryResultStore(url, clock=clock)
    if scheme == "sqlite":
        from .sqlite import SQLiteResultStore

        return SQLiteResultStore(url, clock=clock)
    if scheme in ("redis", "rediss", "unix"):
        _need("redis", "redis")
        from .redis import RedisResultStore

        return RedisResultStore(url, clock=clock)
    if scheme in ("postgresql", "postgres"):
        _need("psycopg", "postgres")
        from .postgres import PostgresResultStore

        return PostgresResultStore(url, clock=clock)
    raise ConfigurationError(
        f"no result store for URL scheme {scheme!r} in {redact_url(url)!r}; known: {_KNOWN}"
    )
