"""What the SQL core asks of a database: a dialect to spell its statements, and the seams.

A statement of the core is written once, as a template: tables in braces
(``{jobs}``, ``{dead}``...), "now" as ``{now}`` (an expression that reads one
parameter: the caller's clock, or on a server with a clock of its own, the
server's when that parameter is NULL), the larger of two values as
``{greatest}(a, b)``, and parameters as ``%s``. :meth:`Dialect.sql` turns a
template into the database's own SQL once and keeps it, so a call pays one dict
look-up, never a rewrite.

The seams, typed as protocols so that this package imports no driver:
:class:`SqlDatabase` runs a piece of work in one transaction on a connection
(``sqlite3.Connection`` or ``psycopg.Connection``), whose cursors are
:class:`SqlCursor`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

from ...clock import Clock, SystemClock

T = TypeVar("T")

TABLES = ("jobs", "dead", "queues", "results", "beats", "beat_history", "claims", "slots")
"""The tables of the core, by the names its templates use."""


class SqlCursor(Protocol):
    """The part of a DB-API cursor the core uses."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: str, params: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, params: Any, /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def close(self) -> None: ...


class SqlConnection(Protocol):
    """The part of a DB-API connection the core uses."""

    def execute(self, sql: str, params: Any = ..., /) -> Any: ...

    def cursor(self) -> Any: ...


class SqlDatabase(Protocol):
    """One database's connections: runs work in a transaction and maps its errors."""

    def run(self, work: Callable[[Any], T], *, reads: bool = ...) -> T:
        """``work(conn)`` in one transaction, committed; its result.

        ``reads``: the work only reads (a backend may then skip the write lock, or
        retry it on a fresh connection where it would not retry a write).
        """
        ...

    def close(self) -> None: ...


class Dialect:
    """How one database spells the core's statements. See the module docstring."""

    def __init__(self, tables: Mapping[str, str], *, now: str, greatest: str, qmark: bool) -> None:
        """``tables``: the real name of each of :data:`TABLES`; ``now``: the SQL of "now"
        from one ``%s`` parameter; ``greatest``: the two-argument maximum function;
        ``qmark``: the driver takes ``?`` placeholders instead of ``%s``."""
        self.names = {name: tables[name] for name in TABLES}
        self.now = now
        self.greatest = greatest
        self.qmark = qmark
        self._done: dict[str, str] = {}

    def sql(self, template: str) -> str:
        """The template in this database's SQL (built on first use, then kept).

        Only constant templates may come here, so the cache stays as small as the
        code: a variable part (an ``IN`` list) is appended to what this returns.
        """
        done = self._done.get(template)
        if done is None:
            done = template.format_map({**self.names, "now": self.now, "greatest": self.greatest})
            if self.qmark:
                done = done.replace("%s", "?")
            self._done[template] = done
        return done

    def any_of(self, column: str, values: Sequence[object]) -> tuple[str, tuple[object, ...]]:
        """A condition "``column`` is one of ``values``" and its parameters, final SQL."""
        if self.qmark:
            return f"{column} IN ({','.join('?' * len(values))})", tuple(values)
        return f"{column} = ANY(%s)", (list(values),)


class SqlBase:
    """What the core's broker and result store share: URL, clock, database and dialect."""

    def __init__(
        self, url: str, db: SqlDatabase, dialect: Dialect, clock: Clock | None = None
    ) -> None:
        self.url = url
        self.clock = clock or SystemClock()
        self._db = db
        self._dialect = dialect
        self._sql = dialect.sql

    def close(self) -> None:
        """Close the database's connections; the object must not be used afterwards."""
        self._db.close()
