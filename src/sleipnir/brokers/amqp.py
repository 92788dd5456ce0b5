"""The RabbitMQ backend (``amqp://user:pass@host:port/vhost``, ``amqps://``).

Client: pika's ``BlockingConnection``. The contract is synchronous and the
worker makes every consuming call from its one control thread, so a blocking
client fits it with no event loop to host; an asyncio client on a private loop
thread would add a thread hop to every call for nothing the contract needs. A
pika connection is not thread-safe, so each is used by one thread at a time:
one connection for the consuming side (reserve, ack, nack, admin), behind a
lock, and small pools for producers (``enqueue`` from any thread: up to 8
connections for single jobs, 2 for ``map`` batches), each lent to one thread
at a time so that threads wait for their confirms side by side.

URL options: ``prefix`` (default ``sleipnir``), ``queue_type`` (``classic`` or
``quorum``), ``park_after`` (seconds, default 900), ``heartbeat`` (seconds,
default 30), ``connect_timeout`` (seconds, default 1.5), ``timeout`` (seconds,
default 5: the bound on every call, see :mod:`sleipnir.brokers.amqp_link`);
the rest goes to pika, and pika's own timeouts named there win over the ones
Sleipnir derives.

Names (``P`` is the prefix, ``q`` a Sleipnir queue, which may not contain ``:``)::

    P.q                 the work queue; durable; classic ones have x-max-priority 9
    P.q:delay:<n>ms     12 delay queues, n = 64 * 4**k: x-message-ttl n, dead-lettering into P.q
    P.q:parked          copies of long-running jobs (per-message TTL), dead-lettering into P.q
    P.q:dead            dead letters, the reason in their headers
    P:queues            registry: one message per queue name (AMQP cannot list queues)
    P:running:<id>      exclusive, while a parked job runs: lives as long as its worker's connection
    P:finished:<id>     durable marker, x-expires 24 h: the parked job finished

Headers of every message (``message_id`` is the job id, ``delivery_mode`` 2)::

    x-sleipnir-attempt    deliveries before this copy (0 when enqueued)
    x-sleipnir-lost       of those, how many ended with their connection closing while
                          it held the delivery (absent = 0)
    x-sleipnir-priority   the job's priority (AMQP priority = clamp(priority + 4, 0, 9))
    x-sleipnir-eta        when the job is due (epoch seconds), on delayed jobs, retries
                          and delayed releases
    x-sleipnir-error      the reason of the last nack
    x-sleipnir-failed-at  on dead letters: when the job was sent there
    x-sleipnir-parked     on a parked copy

Guarantees and how they are kept:

* ``enqueue`` publishes persistent messages to durable queues with
  ``mandatory``: one job with a publisher confirm, a batch in one transaction
  (one disk sync; tx and confirms cannot share a channel). It returns after
  RabbitMQ confirmed or committed every job. A nack or an unroutable message
  raises :class:`BrokerError`. After a lost connection the jobs not yet
  confirmed are published once more on a new one (a job may then be stored
  twice: delivery is at least once).
* Consumers use manual acks and a per-consumer prefetch (basic.qos) equal to
  the first ``limit`` asked, which for a worker is its concurrency plus its
  prefetch; a caller that holds jobs without ever settling one and asks for
  more gets them with basic.get past the window. The lease is
  RabbitMQ's own: a delivery stays with its channel until acked or until the
  connection closes, when RabbitMQ hands it to another consumer. ``renew`` says
  whether the channel still holds the delivery; a token from a closed channel
  is stale and every operation with it returns ``False``.
* A lost connection: every call first makes a non-blocking read on its
  connection (:meth:`Link.alive`), so one the server closed while it sat idle
  (a restart) is replaced before the call uses it. If it breaks during the call,
  ``enqueue`` publishes the unconfirmed jobs once more and ``reserve`` asks once
  more on a new connection. ``ack``, ``nack``, ``renew`` and ``release`` answer
  ``False`` for the deliveries of a channel found dead (they went back to their
  queues); one that breaks in the middle of them raises, and the next call says
  ``False``.
* Attempts: ``x-sleipnir-attempt`` + 1. A delivery with the redelivered flag
  (its worker died holding it) is published again with the attempt raised and
  the old copy acked, before anyone runs it, so the count is exact on classic
  and quorum queues alike (quorum's ``x-delivery-count`` would need no header,
  but classic queues only say "redelivered", not how often). The same new copy
  has ``x-sleipnir-lost`` raised: that is the reservation's ``lost``. A parked
  copy whose worker died (below) runs as it is, with its ``lost`` one more than
  its header says; whatever copy is published of it next carries that count.
* Retries and delays use no plugin: a job due later is published into the
  largest delay queue whose TTL fits in the time left; when it expires there it
  is dead-lettered back into the work queue, and a worker that receives it
  before it is due sends it on to the next bucket (never early, at most 64 ms
  late). Retries, dead-lettering, release and the moves above are all
  "publish the new copy (confirmed), then ack the old one": a crash in between
  leaves two copies, never none.
* Long jobs: RabbitMQ closes a channel that holds a delivery unacked longer
  than its ``consumer_timeout`` (30 minutes by default), which would hand the
  job to another worker while it still runs. A delivery held longer than
  ``park_after`` seconds is therefore *parked*: its worker declares the
  exclusive queue ``P:running:<id>``, publishes a copy into ``P.q:parked`` and
  acks the delivery. The copy comes back every ``min(60, park_after)`` seconds;
  whoever receives it looks at ``P:running:<id>``: held by a live connection,
  the copy is parked again; gone with a ``P:finished:<id>`` marker, the job
  finished and the copy is dropped; gone without one, the worker died and the
  copy runs as the next attempt.

What RabbitMQ cannot tell without its management plugin, and so this backend
does not: where a job waits (``job_info`` knows the jobs this broker object
holds and the dead letters, ``None`` otherwise), how many jobs other workers
run (``stats().running`` counts this process's), and how long the oldest job
has waited (``oldest_ready_at`` is always ``None``), and when the next delayed
job comes due (``next_scheduled_at`` is always ``None``). ``dead_letters``,
``retry_dead`` and ``delete_dead`` read the dead-letter queue from its head.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ..checks import Check, Deployment
from ..clock import Clock, SystemClock
from ..errors import BrokerConnectionError, BrokerError
from . import amqp_checks
from .amqp_admin import Inspection
from .amqp_consume import park, recycle_buffer, reserve_batch
from .amqp_delivery import (
    _DROPPED_HEADERS,
    BULK_CONNECTIONS,
    FINISHED_MARKER_TTL_MS,
    H_ATTEMPT,
    H_ERROR,
    H_ETA,
    H_FAILED_AT,
    H_LOST,
    H_PARKED,
    H_PRIORITY,
    PRODUCER_CONNECTIONS,
    _Consumer,
    _Delivery,
    _int,
    _Token,
)
from .amqp_link import Link, LinkPool, parse_url
from .amqp_topology import Topology, amqp_priority, publish
from .base import (
    Broker,
    Envelope,
    Nack,
    Reservation,
    redact_url,
)

__all__ = ["AMQPBroker", "amqp_priority"]

log = logging.getLogger("sleipnir.brokers.amqp")


class AMQPBroker(Inspection, Broker):
    """The contract on RabbitMQ. See the module docstring for names and guarantees."""

    poll_interval = 0.05
    finds_queued_jobs = False

    def __init__(self, url: str, *, clock: Clock | None = None) -> None:
        self.url = url
        self.clock = clock or SystemClock()
        params, self.options = parse_url(url)
        self.topology = Topology(self.options)
        self.names = self.topology.names
        timeout = self.options.timeout
        self._pub = LinkPool(
            lambda: Link(params, url, "producer", timeout=timeout), PRODUCER_CONNECTIONS
        )
        self._bulk = LinkPool(
            lambda: Link(params, url, "bulk producer", timeout=timeout, transactional=True),
            BULK_CONNECTIONS,
        )
        self._con = Link(params, url, "consumer", timeout=timeout)
        self._generation = 0
        self._buffer: dict[str, deque[_Delivery]] = {}
        self._held: dict[int, _Delivery] = {}
        self._consumers: dict[str, _Consumer] = {}
        self._settling: set[str] = set()
        """Queues on which this object settled a job: its windows do not grow any more."""
        self._acks: list[int] = []

    def __repr__(self) -> str:
        return f"<AMQPBroker {redact_url(self.url)}>"

    def _queues(self) -> list[str]:
        """Every queue of this prefix that ever held a job."""
        with self._con.call("reading the queue registry"):
            self.topology.registered = set(self.topology.read_registry(self._con))
        return sorted(self.topology.registered)

    # -- publishing -----------------------------------------------------------------

    def _republish(
        self,
        d: _Delivery,
        *,
        attempt: int,
        lost: int | None = None,
        eta_at: float | None = None,
        error: str | None = None,
        to: str | None = None,
        extra: dict[str, Any] | None = None,
        expiration_ms: int | None = None,
        parked: bool | None = None,
    ) -> None:
        """Publish a new copy of a delivery (then the caller acks the old one).

        ``parked``: mark the copy as a parked one (True), as a plain job (False),
        or keep what the delivery was (None). ``lost``: the copy's count of lost
        deliveries, or ``None`` to keep the delivery's.
        """
        headers = {k: v for k, v in d.headers.items() if k not in _DROPPED_HEADERS}
        if parked is not None:
            headers.pop(H_PARKED, None)
            if parked:
                headers[H_PARKED] = 1
        headers[H_ATTEMPT] = attempt
        if lost is not None:
            headers[H_LOST] = lost
        headers[H_PRIORITY] = d.priority
        if eta_at is None:
            headers.pop(H_ETA, None)
        else:
            headers[H_ETA] = repr(eta_at)  # pika encodes no floats in tables
        if error is not None:
            headers[H_ERROR] = error
        headers.update(extra or {})
        target = to or self.topology.route(self._con.ch, d.queue, eta_at, self.clock.time())
        publish(self._con.ch, target, d.body, headers, d.priority, d.id, expiration_ms)

    def enqueue(self, envelopes: Sequence[Envelope]) -> None:
        if not envelopes:
            return
        for e in envelopes:
            self.names.check(e.queue)
        single = len(envelopes) == 1
        pool = self._pub if single else self._bulk
        # One job: done or failed within ``timeout`` in all. A batch may be large, so
        # only its waits are bounded (each by ``timeout``), and its wait for a link.
        until = time.monotonic() + self.options.timeout
        with pool.take(until) as link:
            for trial in (1, 2):
                try:
                    with link.call("enqueueing", until if single else None):
                        self._enqueue_on(link, envelopes)
                    return
                except BrokerConnectionError:
                    # The connection broke under us (or the server had closed it while it
                    # was idle): the unconfirmed jobs go out once more on a new one. Not
                    # after a wait ran out (the link is silent, and the connection was
                    # aborted so that nothing it held is stored late), nor when no
                    # connection could be opened.
                    if trial == 2 or not link.broke:
                        raise
                    log.info("RabbitMQ connection lost while enqueueing; reconnecting once")

    def _enqueue_on(self, link: Link, envelopes: Sequence[Envelope]) -> None:
        ch = link.channel()
        for queue in dict.fromkeys(e.queue for e in envelopes):
            self.topology.ensure(link, queue)
        now = self.clock.time()
        link.returned.clear()
        for e in envelopes:
            headers: dict[str, Any] = {H_ATTEMPT: 0, H_PRIORITY: e.priority}
            if e.eta_at is not None and e.eta_at > now:
                headers[H_ETA] = repr(e.eta_at)
            target = self.topology.route(ch, e.queue, e.eta_at, now)
            publish(ch, target, e.body, headers, e.priority, e.id)
        if link.transactional:
            ch.tx_commit()
            link.conn.process_data_events(time_limit=0)  # returns come before commit-ok
            if link.returned:
                raise BrokerError(
                    f"RabbitMQ could not route {len(link.returned)} of {len(envelopes)} jobs "
                    f"(was a queue deleted?); the others were stored: {link.returned[:3]}"
                )

    # -- consuming --------------------------------------------------------------------

    def reserve(self, queues: Sequence[str], limit: int, lease: float) -> list[Reservation]:
        if limit <= 0 or not queues:
            return []
        until = self._con.deadline()
        try:
            return reserve_batch(self, queues, limit, lease, until)
        except BrokerConnectionError:
            # The connection broke during the call. Safe to ask again on a new one: what
            # the old channel held goes back to its queues when it closes, and its
            # tokens are stale. Not after a wait ran out (the link is silent), nor
            # when no connection could be opened.
            if not self._con.broke:
                raise
            log.info("RabbitMQ connection lost while reserving; reconnecting once")
            return reserve_batch(self, queues, limit, lease, until)

    def _move(self, d: _Delivery, **kw: Any) -> None:
        self._republish(d, **kw)
        self._con.ch.basic_ack(d.tag)

    def _holds(self, res: Reservation) -> _Delivery | None:
        token = res.token
        if not isinstance(token, _Token) or token.generation != self._generation:
            return None
        if not self._con.is_open:
            return None
        return self._held.get(token.tag)

    def _settle(
        self, items: Sequence[Reservation], doing: str, act: Callable[[_Delivery, int], None]
    ) -> list[bool]:
        out: list[bool] = []
        if not items:
            return out
        with self._con.call(doing, self._con.deadline()):
            # A connection that died while the jobs ran took their deliveries back to
            # the queues: notice it now, and say "lease lost" (False) instead of failing.
            self._con.alive()
            try:
                for i, res in enumerate(items):
                    d = self._holds(res)
                    if d is None:
                        out.append(False)
                        continue
                    act(d, i)
                    del self._held[d.tag]
                    self._settling.add(d.queue)
                    out.append(True)
            finally:
                # Even when a later item failed, the acks of the earlier ones go out
                # (their new copies are published); on a dead channel they mean nothing.
                if self._con.is_open and self._con.generation == self._generation:
                    self._flush_acks()
                else:
                    self._acks.clear()
            if any(out):
                # An ack has no answer: a round trip says that the server got them,
                # or, when it does not come in time, the call fails instead of
                # reporting acks that may never arrive (the jobs then run again).
                self._con.ping()
        return out

    def _flush_acks(self) -> None:
        """Send the acks gathered by :meth:`_done` in one write.

        pika's blocking ``basic_ack`` writes to the socket at every call; its
        channel implementation queues the frame, and the last blocking call sends
        them all (a third of a millisecond per job saved).
        """
        tags, self._acks = self._acks, []
        ch = self._con.ch
        for tag in tags[:-1]:
            ch._impl.basic_ack(tag)
        if tags:
            ch.basic_ack(tags[-1])

    def _done(self, d: _Delivery) -> None:
        """Remove the delivery: ack it, or for a parked job mark it finished."""
        if d.parked:
            ch = self._con.ch
            args = {"x-expires": FINISHED_MARKER_TTL_MS}
            ch.queue_declare(self.names.finished(d.id), durable=True, arguments=args)
            ch.queue_delete(self.names.running(d.id))
        else:
            self._acks.append(d.tag)

    def renew(self, reservations: Sequence[Reservation], lease: float) -> list[bool]:
        out: list[bool] = []
        with self._con.call("renewing", self._con.deadline()):
            self._con.alive()  # as in _settle
            for res in reservations:
                d = self._holds(res)
                out.append(d is not None)
                # Real time, not the injected clock: it races RabbitMQ's own timer.
                held_for = 0.0 if d is None else time.monotonic() - d.received_at
                if d is not None and not d.parked and held_for >= self.options.park_after:
                    park(self, d, res.attempt, res.lost)
            recycle_buffer(self)
            if any(out):
                # The lease is the connection: it holds while the server still answers
                # on it. Cut off, the call fails within the bound instead of saying
                # True for deliveries the server may be handing to another worker.
                self._con.ping()
        return out

    @property
    def _park_check_ms(self) -> int:
        return max(1, round(min(60.0, self.options.park_after) * 1000))

    def ack(self, reservations: Sequence[Reservation]) -> list[bool]:
        return self._settle(reservations, "acking", lambda d, i: self._done(d))

    def nack(self, nacks: Sequence[Nack]) -> list[bool]:
        now = self.clock.time()

        def act(d: _Delivery, i: int) -> None:
            n = nacks[i]
            if n.retry_at is None:
                self._republish(
                    d,
                    attempt=n.reservation.attempt,
                    lost=n.reservation.lost,
                    error=n.reason,
                    to=self.names.dead(d.queue),
                    extra={H_FAILED_AT: repr(now)},
                    parked=False,
                )
            else:
                eta = n.retry_at if n.retry_at > now else None
                self._republish(
                    d,
                    attempt=n.reservation.attempt,
                    lost=n.reservation.lost,
                    eta_at=eta,
                    error=n.reason,
                    parked=False,
                )
            self._done(d)

        return self._settle([n.reservation for n in nacks], "nacking", act)

    def release(
        self, reservations: Sequence[Reservation], ready_at: float | None = None
    ) -> list[bool]:
        now = self.clock.time()
        eta = ready_at if ready_at is not None and ready_at > now else None

        def act(d: _Delivery, i: int) -> None:
            # The new copy's header counts the deliveries before this one: this one is not
            # counted. A later ``ready_at`` sends it through the delay queues, like a retry.
            res = reservations[i]
            before = res.attempt - 1
            self._republish(d, attempt=max(0, before), lost=res.lost, eta_at=eta, parked=False)
            self._done(d)

        return self._settle(reservations, "releasing", act)

    def wait(self, queues: Sequence[str], timeout: float) -> None:
        # Well inside the call's deadline, which would otherwise abort a healthy connection.
        timeout = min(timeout, self.options.timeout / 2)
        with self._con.call("waiting for jobs", self._con.deadline()):
            if not self._con.is_open or not any(q in self._consumers for q in queues):
                time.sleep(min(timeout, self.poll_interval))
                return
            if any(self._buffer.get(q) for q in queues):
                return
            self._con.conn.process_data_events(time_limit=timeout)

    # -- dead letters -------------------------------------------------------------------

    # -- what the broker knows -------------------------------------------------------------

    def diagnose(self, about: Deployment | None = None) -> list[Check]:
        return amqp_checks.diagnose(lambda: self, self.url, about or Deployment())

    def close(self) -> None:
        # One deadline for all of it: connections that do not answer by then are aborted.
        until = self._con.deadline()
        try:
            with self._con.call("closing", until):
                if self._con.is_open:
                    for consumer in self._consumers.values():
                        self._con.ch.basic_cancel(consumer.tag)
                    self._con.conn.process_data_events(time_limit=0)
                    # Deliveries that never reached a worker go back uncounted.
                    for buf in self._buffer.values():
                        while buf:
                            d = buf.popleft()
                            self._move(d, attempt=max(0, _int(d.headers.get(H_ATTEMPT))))
        except BrokerError as exc:
            log.warning("closing the RabbitMQ consumer: %s", exc)
        with self._con.lock:
            self._con.close(until)
            self._buffer.clear()
            self._held.clear()
            self._consumers.clear()
        self._pub.close(until)
        self._bulk.close(until)
