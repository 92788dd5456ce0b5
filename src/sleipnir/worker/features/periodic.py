"""The scheduler (:mod:`sleipnir.schedule`), as a hook: every worker that runs one fires
the app's periodic jobs from a thread of its own; each tick fires once across them."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from ...hooks import Hook
from ...schedule import Scheduler

if TYPE_CHECKING:
    from ..loop import Worker

__all__ = ["Periodic"]

log = logging.getLogger("sleipnir.worker")


class Periodic(Hook):
    def __init__(self, worker: Worker) -> None:
        self.scheduler = Scheduler(worker.app)

    def after_worker_start(self, worker: Worker) -> None:
        threading.Thread(target=self.scheduler.run, name="sleipnir-scheduler", daemon=True).start()
        log.info(
            "periodic: %s",
            ", ".join(f"{e.name} ({e.schedule})" for e in self.scheduler.entries),
        )

    def after_worker_stop(self, worker: Worker) -> None:
        self.scheduler.stop()
