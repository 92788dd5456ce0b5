"""How the Redis backend talks to its server, so that a call that failed did what it says.

Owns the client (:func:`connect`), the connections beneath it, the per-thread
connections of :class:`Direct` and the scripts' calls (:class:`Script`). What holds:

* **A command is sent once.** Nothing here re-sends a command that may have reached
  the server: redis-py's retries are off. A connection is (re)opened before a command
  is written when it is known to be unfit: closed by the server (seen as end of file
  before writing, which is how a Redis restart looks), or older than the last failure
  seen on any connection to the same server in this process (the link may be gone).
* **A request the caller gave up on never lands later.** Every TCP connection is
  opened with ``SO_LINGER {1, 0}`` and closed without ``shutdown()``: a close after a
  timeout is a reset that throws away the bytes the kernel had not yet delivered,
  instead of a graceful close that keeps sending them after the link comes back.
  Bytes already in a stalled server's receive buffer are out of reach of any reset,
  so every script also carries a deadline in the server's time (``lua/prelude.lua``):
  the send time plus ``socket_timeout``, translated with a lower bound of the
  server's clock offset measured by ``TIME`` when the connection opened. A script
  that starts after it changes nothing.
* **Bounded waits.** One connect attempt (``socket_connect_timeout``, 1 s by default:
  one SYN) and one wait for the reply (``socket_timeout``, 5 s), no retries, so a
  call fails within those bounds.

It must not know the key layout: that is :mod:`sleipnir.brokers.redis`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import ConfigurationError
from .base import redact_url

__all__ = ["LATE", "Direct", "Script", "connect"]

LATE = "LATE"
"""The error code of a script that reached Redis after its deadline (and did nothing)."""

_LUA = Path(__file__).with_name("lua")
_PRELUDE = (_LUA / "prelude.lua").read_text()

# Query options redis-py understands in a URL (besides our own ``prefix``).
_URL_OPTIONS = frozenset(
    {
        *redis.connection.URL_QUERY_ARGUMENT_PARSERS,
        "client_name",
        "password",
        "username",
        "path",
        "ssl_ca_certs",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_cert_reqs",
    }
)

_ABORT_ON_CLOSE = struct.pack("ii", 1, 0)  # struct linger {l_onoff = 1, l_linger = 0}


class _Server:
    """What this process has seen of one server: a count of failed calls."""

    __slots__ = ("failures",)

    def __init__(self) -> None:
        self.failures = 0


_servers: dict[str, _Server] = {}
_servers_lock = threading.Lock()


def _server(address: str) -> _Server:
    with _servers_lock:
        return _servers.setdefault(address, _Server())


class _Guarded:
    """Mixed into redis-py's connection classes; see the module docstring.

    ``clock_offset`` is a lower bound of (server time - local time), measured when the
    connection opened; ``None`` where ``TIME`` was refused (then no deadlines).
    """

    _sock: Any
    _parser: Any
    socket_timeout: float | None
    clock_offset: float | None = None
    _seen_failures = -1
    _server_state: _Server | None = None
    _checked = False
    _poller: Any = None
    """``ready()`` ran for the command about to be written: the write need not look again."""

    # -- redis-py's hooks ---------------------------------------------------------

    def _connect(self) -> Any:
        sock = super()._connect()  # type: ignore[misc]
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _ABORT_ON_CLOSE)
        self._poller = select.poll()  # made once: the look before each command is one poll(0)
        self._poller.register(sock, select.POLLIN)
        return sock

    def on_connect(self) -> None:
        self._seen_failures = self._server().failures
        super().on_connect()  # type: ignore[misc]
        self.clock_offset = None
        self.send_command("TIME", check_health=False)  # type: ignore[attr-defined]
        try:
            seconds, micros = self.read_response()
        except redis.ResponseError:  # refused by an ACL: this connection sends no deadlines
            return
        # Read after the reply came: the server's reading was no later, so this is a
        # lower bound of the offset, and a deadline built on it may only come early.
        self.clock_offset = int(seconds) + int(micros) / 1e6 - time.time()

    def disconnect(self, *args: Any) -> None:
        """Abort: the close is a reset (``SO_LINGER {1, 0}``) and unsent bytes are dropped.

        No ``shutdown()`` first, unlike redis-py: it would queue a FIN behind them.
        """
        self._parser.on_disconnect()
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._checked:
            self.ready()
        self._checked = False
        try:
            super().send_packed_command(command, check_health)  # type: ignore[misc]
        except (redis.ConnectionError, redis.TimeoutError):
            self._server().failures += 1
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except (redis.ConnectionError, redis.TimeoutError):
            self._server().failures += 1
            raise

    # -- ours -------------------------------------------------------------------

    def _server(self) -> _Server:
        if self._server_state is None:
            self._server_state = _server(self._host_error())  # type: ignore[attr-defined]
        return self._server_state

    def ready(self) -> None:
        """Connected and fit to carry a command, reconnecting first where that is safe.

        Safe means before anything of the next command was written: a connection
        the server closed, or one older than a failure seen on another connection to
        the same server, is replaced. A failed connect raises; nothing was sent.
        """
        if self._sock is not None and (
            self._seen_failures != self._server().failures or self._closed_by_peer()
        ):
            self.disconnect()
        if self._sock is None:
            try:
                self.connect()  # type: ignore[attr-defined]
            except (redis.ConnectionError, redis.TimeoutError):
                self._server().failures += 1
                raise
        self._checked = True

    def _closed_by_peer(self) -> bool:
        """True if the idle connection has anything to read: end of file, or stray bytes."""
        sock = self._sock
        try:
            if isinstance(sock, ssl.SSLSocket):  # bytes may be TLS records, not a reply
                return bool(self._parser.can_read(0))
            return bool(self._poller.poll(0))
        except (redis.ConnectionError, OSError):
            return True

    def deadline(self) -> str:
        """The latest server time at which a command sent now may still take effect."""
        if self.clock_offset is None or not self.socket_timeout:
            return ""
        return repr(time.time() + self.clock_offset + self.socket_timeout)


class _Connection(_Guarded, redis.Connection):
    pass


class _SSLConnection(_Guarded, redis.SSLConnection):
    pass


class _UnixConnection(_Guarded, redis.UnixDomainSocketConnection):
    pass


_CONNECTION_CLASSES = {"redis": _Connection, "rediss": _SSLConnection, "unix": _UnixConnection}


def connect(url: str) -> tuple[Any, str]:
    """A client for ``url`` and the key prefix named in it (``?prefix=``, default ``sleipnir``)."""
    parts = urlsplit(url)
    if parts.scheme not in _CONNECTION_CLASSES:
        raise ConfigurationError(f"not a Redis URL: {redact_url(url)!r}")
    options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    prefix = options.pop("prefix", "sleipnir")
    if not prefix or any(c in prefix for c in " \n{}"):
        raise ConfigurationError(f"invalid Redis key prefix {prefix!r}")
    unknown = sorted(set(options) - _URL_OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"unknown Redis URL option(s) {', '.join(unknown)} in {redact_url(url)!r}; "
            f"known: prefix, {', '.join(sorted(_URL_OPTIONS))}"
        )
    # Rebuilt by hand: urlunsplit would turn unix:///path into unix:/path.
    clean = url.split("?", 1)[0] + (f"?{urlencode(options)}" if options else "")
    try:
        # One SYN to connect (its first retransmission is due after 1 s), one reply
        # wait, no retries: a call fails within socket_connect_timeout +
        # socket_timeout. No health-check PING. URL options (?socket_timeout=...)
        # win over these defaults; a URL's retry_on_timeout retries nothing, as
        # the Retry below allows no retry.
        client: Any = redis.Redis.from_url(
            clean,
            connection_class=_CONNECTION_CLASSES[parts.scheme],
            socket_connect_timeout=1.0,
            socket_timeout=5.0,
            health_check_interval=0,
            retry=Retry(NoBackoff(), 0),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"bad Redis URL {redact_url(url)!r}: {exc}") from None
    return client, prefix


_fork_generation = 0


def _forked() -> None:
    global _fork_generation, _servers_lock
    _fork_generation += 1
    _servers_lock = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_forked)


class Direct:
    """Commands sent on a connection of the calling thread's own, kept between calls.

    The pool's check-out before every command (a lock, and a non-blocking read that
    makes sure the connection holds no stale reply) costs about as much as a loopback
    round trip on a small VM: measured, a PING took 93 µs through the client and 42 µs
    this way. A thread's connection is never shared, so no reply can be left half
    read by another caller; on an error it is aborted and the error raised, never
    the command sent again. A forked child opens its own.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self._local = threading.local()
        kwargs = client.connection_pool.connection_kwargs
        self.socket_timeout: float | None = kwargs.get("socket_timeout")

    def _connection(self) -> Any:
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.generation != _fork_generation:
            pool = self.client.connection_pool
            conn = pool.connection_class(**pool.connection_kwargs)
            local.conn, local.generation = conn, _fork_generation
        return conn

    def __call__(self, *args: Any) -> Any:
        return self._send(None, args)

    def script(self, script: Script, args: Sequence[Any]) -> Any:
        """Run ``script`` with ``args`` (after the deadline the prelude takes)."""
        try:
            return self._send(script.sha, args)
        except redis.exceptions.NoScriptError:  # a restarted server: the script was not run
            return self._send(script, args)

    def _send(self, script: Script | str | None, args: Sequence[Any]) -> Any:
        conn = self._connection()
        try:
            conn.ready()
            if script is None:
                conn.send_command(*args)
            elif isinstance(script, str):
                conn.send_command("EVALSHA", script, 0, conn.deadline(), *args)
            else:
                conn.send_command("EVAL", script.text, 0, conn.deadline(), *args)
            return conn.read_response()
        except redis.ResponseError:
            raise  # the whole reply was read: the connection is fine
        except BaseException:
            self._local.conn = None
            conn.disconnect()
            raise

    def server_time(self) -> float:
        """The server's clock now, as estimated from this thread's connection (a lower bound)."""
        conn = self._connection()
        try:
            conn.ready()
        except BaseException:
            self._local.conn = None
            raise
        conn._checked = False  # nothing is written now: the next command looks again
        offset = conn.clock_offset
        return time.time() + (offset or 0.0)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.disconnect()


class Script:
    """A Lua script (``lua/<name>.lua`` after ``lua/prelude.lua``), called by EVALSHA.

    Loaded again if the server lost it (a restart). Sent through :class:`Direct`,
    which also skips redis-py's per-call argument filtering in ``Script.__call__``
    (about 8 µs).
    """

    def __init__(self, direct: Direct, name: str) -> None:
        self.direct = direct
        self.text = _PRELUDE + (_LUA / f"{name}.lua").read_text()
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()

    def __call__(self, args: Sequence[Any]) -> Any:
        return self.direct.script(self, args)
