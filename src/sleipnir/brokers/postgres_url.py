"""How the PostgreSQL backend reads its URL: the schema, the pool, and the timeouts.

:func:`_parse` turns a ``postgresql://`` URL into the libpq conninfo that every
connection of the backend uses, with :func:`_timeouts` added so that no call
waits for ever on a server it cannot reach. It opens nothing.
"""

from __future__ import annotations

import math
import re
from urllib.parse import quote, unquote, urlencode, urlsplit

from ..errors import ConfigurationError
from .base import redact_url

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _timeouts(connect_timeout: int) -> dict[str, str]:
    """The libpq options that bound every wait on the server to about ``connect_timeout``.

    * A new connection: libpq's own ``connect_timeout``.
    * An open one whose request (or COMMIT) the server does not acknowledge:
      ``tcp_user_timeout``. The kernel then drops the connection *with its send
      queue*, so bytes the caller gave up on are never delivered later.
    * An open one waiting on an answer, with nothing left unacknowledged (the request
      arrived, the reply is lost; or an idle LISTEN): TCP keepalives, a probe a
      second after a little silence. On Linux ``tcp_user_timeout`` also ends the
      probing, at ``connect_timeout``; elsewhere ``idle + interval * count`` does.
      A server that is merely slow answers the probes and is waited for.
    * ``options``: the same for the server's end of the connection, so a session
      whose client vanished mid-transaction ends (and rolls back, freeing the rows it
      locked) within ``connect_timeout`` instead of after the kernel's two hours.
    """
    idle = max(1, connect_timeout - 3)
    user_timeout_ms = connect_timeout * 1000
    return {
        "keepalives": "1",
        "keepalives_idle": str(idle),
        "keepalives_interval": "1",
        "keepalives_count": "3",
        "tcp_user_timeout": str(user_timeout_ms),
        "options": (
            f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval=1"
            f" -c tcp_keepalives_count=3 -c tcp_user_timeout={user_timeout_ms}"
        ),
    }


def _query(query: str) -> dict[str, str]:
    """A URL's query as libpq reads it: ``%XX`` escapes decoded, ``+`` kept as it is."""
    options = {}
    for pair in query.split("&"):
        if pair:
            key, _, value = pair.partition("=")
            options[unquote(key)] = unquote(value)
    return options


def _parse(url: str) -> tuple[str, str, int, int]:
    """Split a URL into (libpq conninfo URL, schema, pool size, connect timeout).

    The conninfo carries :func:`_timeouts`; an option the URL gives itself wins
    (for ``options``, the URL's ``-c`` settings come after ours and override them).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigurationError(f"not a PostgreSQL URL: {redact_url(url)!r}")
    options = _query(parts.query)
    schema = options.pop("schema", "sleipnir")
    if not _SCHEMA_NAME.match(schema):
        raise ConfigurationError(
            f"schema must be a lower-case SQL identifier (a-z, 0-9, _), not {schema!r}"
        )
    try:
        pool_size = int(options.pop("pool_size", "4"))
        seconds = float(options.get("connect_timeout", "5"))
    except ValueError:
        raise ConfigurationError(
            f"pool_size and connect_timeout must be numbers in {redact_url(url)!r}"
        ) from None
    if pool_size < 1:
        raise ConfigurationError("pool_size must be >= 1")
    if not 0 < seconds < math.inf:
        # libpq reads 0 as "wait for ever", which no call here may do.
        raise ConfigurationError("connect_timeout must be a finite number of seconds > 0")
    # libpq takes whole seconds, and reads anything under 2 as 2.
    connect_timeout = max(2, math.ceil(seconds))
    options["connect_timeout"] = str(connect_timeout)
    for key, value in _timeouts(connect_timeout).items():
        if key == "options":
            # Ours first: a ``-c`` setting the URL repeats overrides ours.
            options[key] = f"{value} {options[key]}" if options.get(key) else value
        else:
            options.setdefault(key, value)
    conninfo = url.split("?", 1)[0] + "?" + urlencode(options, quote_via=quote)
    return conninfo, schema, pool_size, connect_timeout
