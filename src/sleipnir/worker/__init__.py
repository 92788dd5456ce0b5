"""The worker: one process that reserves jobs, runs them and settles them.

* :mod:`.loop`: :class:`Worker`, the control loop (reserve, start, renew, collect,
  settle, stop);
* :mod:`.leases`: reserving and renewing, and what a lost link means;
* :mod:`.starting`: when a held job may start;
* :mod:`.runners`: threads, an event loop, processes of their own;
* :mod:`.policy`: what each way a run ends means (pure);
* :mod:`.settle`: outcomes stored, then acks and nacks;
* :mod:`.apart`: jobs that may have killed their worker run apart;
* :mod:`.features`: the built-in features, as hooks (:mod:`sleipnir.hooks`).
"""

from ..storekeys import apart_key
from .apart import APART_EXPIRES, MAX_CRASHES
from .features.cancel import CANCEL_CHECK_EVERY
from .held import JobRun, Outcome, WorkerStats
from .loop import IDLE_WAIT, RETRY_PAUSE, Worker
from .policy import MAX_LOST, backoff_delay

__all__ = [
    "APART_EXPIRES",
    "CANCEL_CHECK_EVERY",
    "IDLE_WAIT",
    "MAX_CRASHES",
    "MAX_LOST",
    "RETRY_PAUSE",
    "JobRun",
    "Outcome",
    "Worker",
    "WorkerStats",
    "apart_key",
    "backoff_delay",
]
