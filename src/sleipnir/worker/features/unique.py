"""Unique tasks (:mod:`sleipnir.keys`), as a hook: a unique task's job that finished for
good frees its key for the next call. A key that cannot be freed ends with its
``unique_for`` window."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ...errors import SleipnirError
from ...hooks import Hook
from ...keys import UNIQUE_HEADER
from ...results import Capability, JobState
from ..held import JobRun, Outcome

if TYPE_CHECKING:
    from ..loop import Worker

__all__ = ["UniqueKeys"]

log = logging.getLogger("sleipnir.worker")


class UniqueKeys(Hook):
    def __init__(self, worker: Worker) -> None:
        self._store = worker.app.results

    def after_settle(self, job: JobRun, outcome: Outcome) -> None:
        key = job.headers.get(UNIQUE_HEADER)
        if key is None or outcome.state is JobState.RETRYING or outcome.lost or job.lost:
            return
        if not self._store.keeps(Capability.KEYS):
            log.warning("could not free unique key %s: %s", key, self._store.lacks(Capability.KEYS))
            return
        try:
            self._store.release_key(key)
        except SleipnirError as exc:
            log.warning("could not free unique key %s: %s", key, exc)
