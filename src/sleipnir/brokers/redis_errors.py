"""redis-py's exceptions as Sleipnir's, naming the server (a script that found its deadline
passed is an outage, not a failure).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import redis

from ..errors import BrokerConnectionError, BrokerError
from .base import (
    redact_url,
)
from .redis_link import LATE


@contextlib.contextmanager
def _errors(url: str) -> Iterator[None]:
    """Turn redis-py's exceptions into Sleipnir's, naming the server."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BrokerConnectionError(f"Redis at {redact_url(url)} unreachable: {exc}") from exc
    except redis.ResponseError as exc:
        if str(exc).startswith(LATE):  # the script changed nothing: say so as an outage
            raise BrokerConnectionError(f"Redis at {redact_url(url)} too slow: {exc}") from exc
        raise BrokerError(f"Redis at {redact_url(url)} failed: {exc}") from exc
    except redis.RedisError as exc:
        raise BrokerError(f"Redis at {redact_url(url)} failed: {exc}") from exc


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
