"""The heartbeat thread of a worker (:class:`HeartbeatSender`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..clock import Clock
from ..errors import SleipnirError
from ..outage import Outage
from ..results import Capability, ResultStore, WorkerBeat
from .beats import Heartbeat, _beat_encoder, sample_of
from .host import HostSampler

log = logging.getLogger("sleipnir.monitor")


class HeartbeatSender:
    """Sends a worker's heartbeat every ``interval`` seconds from a thread of its own.

    ``describe`` returns the worker's beat without time and host figures; the
    sender adds them. A beat that cannot be stored is logged and the next one
    tried: monitoring never stops a worker. Times come from ``clock``; the
    cadence of the thread from the monotonic clock.
    """

    def __init__(
        self,
        store: ResultStore,
        clock: Clock,
        describe: Callable[[], Heartbeat],
        *,
        interval: float = 5.0,
        keep: float = 3600.0,
        sampler: HostSampler | None = None,
    ) -> None:
        if not interval > 0:
            raise ValueError("the heartbeat interval must be > 0 seconds")
        self.store = store
        self.clock = clock
        self.describe = describe
        self.interval = interval
        self.keep = keep
        self.ttl = max(3 * interval, interval + 10.0)
        """A worker whose last beat is older than this counts as gone."""
        self.sampler = sampler or HostSampler()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned = False
        self._lacks = store.lacks(Capability.BEATS)
        """Why this store keeps no heartbeats (``None`` when it keeps them), asked once."""
        self._outage = Outage("the result store", log)

    def send(self, *, stopping: bool = False) -> Heartbeat | None:
        """Build and store one beat now; return it, or ``None`` if it could not be stored."""
        beat = self.describe()
        beat.at = self.clock.time()
        beat.interval = self.interval
        beat.stopping = stopping
        beat.host_figures = self.sampler.read()
        if not beat.parent:
            beat.parent = self.sampler.process_name(beat.ppid)
        # A stopped worker stays listed (as stopping) for a little while, then goes.
        ttl = min(self.ttl, 30.0) if stopping else self.ttl
        record = WorkerBeat(
            worker_id=beat.worker_id,
            at=beat.at,
            expires_at=beat.at + ttl,
            body=_beat_encoder.encode(beat),
            sample=_beat_encoder.encode(sample_of(beat)),
        )
        if self._lacks is not None:
            if not self._warned:
                log.warning("no heartbeats: %s", self._lacks)
                self._warned = True
            return None
        try:
            self.store.beat(record, self.keep)
        except (SleipnirError, OSError) as exc:
            # Monitoring must never stop the work; the next beat tries again. An outage
            # is logged when it begins and when it ends, not at every beat.
            self._outage.failed("heartbeat not stored", exc)
            return None
        self._outage.ok()
        return beat

    def start(self) -> None:
        """Send a first beat now, then one every ``interval`` seconds on a daemon thread."""
        self.send()
        self._thread = threading.Thread(target=self._run, name="sleipnir-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.send()

    def stop(self) -> None:
        """Stop the thread and send a last beat that says the worker stopped."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        self.send(stopping=True)
