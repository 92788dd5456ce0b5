"""The SQL core: the broker and result store written once for every SQL database.

:class:`SqlBroker` and :class:`SqlResultStore` hold the statements and the
transactions of the contract; a :class:`Dialect` says how one database spells
its tables, its placeholders and "now"; each backend module
(:mod:`sleipnir.brokers.sqlite`, :mod:`sleipnir.brokers.postgres`) adds what only
it can do (its enqueue, its reserve statement, its wake-up) and brings the
connection plumbing of its database (``sqlite_file``, ``postgres_link``).

It must not import a database driver: a backend's driver is imported only when
that backend is used.
"""

from __future__ import annotations

from .broker import SqlBroker
from .dialect import Dialect, SqlConnection, SqlCursor, SqlDatabase
from .results import SqlResultStore

__all__ = ["Dialect", "SqlBroker", "SqlConnection", "SqlCursor", "SqlDatabase", "SqlResultStore"]
