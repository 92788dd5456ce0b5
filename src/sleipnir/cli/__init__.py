"""The ``sleipnir`` command: run workers, enqueue jobs, look at queues and dead letters.

The group and what the commands share are in :mod:`.base`; each command module
registers its commands on it when imported: :mod:`.workers` (``worker``, ``run``,
``scheduler``), :mod:`.deploying` (``status``, ``deploy``), :mod:`.inspect`
(``enqueue``, ``queues``, ``job``, ``cancel``), :mod:`.dead` (``dead
list|retry|purge``), :mod:`.ops` (``doctor``, ``web``, ``top``).
"""

from __future__ import annotations

from . import dead, deploying, inspect, ops, workers
from .base import load_app, main
from .workers import _worker_options

__all__ = [
    "_worker_options",
    "dead",
    "deploying",
    "inspect",
    "load_app",
    "main",
    "ops",
    "workers",
]
