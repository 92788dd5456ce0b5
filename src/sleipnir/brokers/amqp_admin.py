"""The RabbitMQ broker's inspection side: dead letters found by scanning their queue, and
parked copies of jobs longer than the consumer timeout."""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

import pika  # type: ignore[import-untyped]

from .amqp_consume import consume_channel
from .amqp_delivery import (
    H_ATTEMPT,
    H_ERROR,
    H_FAILED_AT,
    H_PRIORITY,
    _Delivery,
    _float,
    _int,
    _text,
)
from .amqp_topology import SCAN_LIMIT, publish
from .base import BrokerJobState, DeadLetter, JobInfo, QueueStats

if TYPE_CHECKING:
    from .amqp import AMQPBroker

log = logging.getLogger("sleipnir.brokers.amqp")


def scan_dead(
    broker: AMQPBroker, queues: Sequence[str], visit: Callable[[Any, Any, Any, bytes, str], bool]
) -> None:
    """Read each queue's dead letters from the head; stop when ``visit`` says so.

    ``visit(channel, method, props, body, queue)`` may ack on the channel;
    everything not acked goes back, in place, when the scan channel closes.
    """
    with broker._con.call("reading dead letters"):
        for q in queues:
            ch = broker._con.scratch()
            try:
                with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
                    # A queue in the registry but never declared here yet.
                    ch.queue_declare(broker.names.dead(q), passive=True)
                if not ch.is_open:
                    continue
                for _ in range(SCAN_LIMIT):
                    method, props, body = ch.basic_get(broker.names.dead(q), auto_ack=False)
                    if method is None or not visit(ch, method, props, body, q):
                        break
            finally:
                if ch.is_open:
                    with contextlib.suppress(Exception):
                        ch.close()


def dead_letter(broker: AMQPBroker, props: Any, body: bytes, queue: str) -> DeadLetter:
    d = _Delivery(queue, 0, "", False, props, body)
    h = d.headers
    return DeadLetter(
        id=d.id,
        queue=queue,
        body=body,
        attempt=_int(h.get(H_ATTEMPT)),
        reason=_text(h.get(H_ERROR, "")),
        failed_at=_float(h.get(H_FAILED_AT)) or 0.0,
        priority=d.priority,
    )


class Inspection:
    """The broker's inspection side: what is queued, dead or gone (a mixin of
    :class:`AMQPBroker`)."""

    def dead_letters(self, queue: str | None = None, limit: int = 100) -> list[DeadLetter]:
        broker = cast("AMQPBroker", self)
        out: list[DeadLetter] = []
        if limit <= 0:
            return out

        def visit(ch: Any, method: Any, props: Any, body: bytes, q: str) -> bool:
            out.append(dead_letter(broker, props, body, q))
            return len(out) < limit

        scan_dead(broker, [queue] if queue is not None else broker._queues(), visit)
        out.sort(key=lambda d: d.failed_at)
        return out[:limit]

    def retry_dead(self, ids: Sequence[str] | None = None) -> list[str]:
        broker = cast("AMQPBroker", self)
        wanted = None if ids is None else set(ids)
        moved: list[str] = []

        def visit(ch: Any, method: Any, props: Any, body: bytes, q: str) -> bool:
            dead = dead_letter(broker, props, body, q)
            if wanted is None or dead.id in wanted:
                headers = {H_ATTEMPT: 0, H_PRIORITY: dead.priority}
                publish(broker._con.ch, broker.names.work(q), body, headers, dead.priority, dead.id)
                ch.basic_ack(method.delivery_tag)
                moved.append(dead.id)
            return wanted is None or len(moved) < len(wanted)

        scan_dead(broker, broker._queues(), visit)
        return moved

    def delete_dead(self, ids: Sequence[str] | None = None) -> int:
        broker = cast("AMQPBroker", self)
        wanted = None if ids is None else set(ids)
        deleted = 0

        def visit(ch: Any, method: Any, props: Any, body: bytes, q: str) -> bool:
            nonlocal deleted
            if wanted is None or dead_letter(broker, props, body, q).id in wanted:
                ch.basic_ack(method.delivery_tag)
                deleted += 1
            return wanted is None or deleted < len(wanted)

        scan_dead(broker, broker._queues(), visit)
        return deleted

    def job_info(self, job_id: str) -> JobInfo | None:
        broker = cast("AMQPBroker", self)
        with broker._con.call("looking a job up"):
            for d in broker._held.values():
                if d.id == job_id and broker._con.is_open:
                    attempt = _int(d.headers.get(H_ATTEMPT)) + 1
                    err = d.headers.get(H_ERROR)
                    return JobInfo(
                        job_id,
                        d.queue,
                        BrokerJobState.RESERVED,
                        attempt,
                        None if err is None else _text(err),
                    )
        found: list[DeadLetter] = []

        def visit(ch: Any, method: Any, props: Any, body: bytes, q: str) -> bool:
            dead = dead_letter(broker, props, body, q)
            if dead.id == job_id:
                found.append(dead)
            return not found

        scan_dead(broker, broker._queues(), visit)
        if found:
            dead = found[0]
            return JobInfo(job_id, dead.queue, BrokerJobState.DEAD, dead.attempt, dead.reason)
        return None

    def stats(self) -> list[QueueStats]:
        broker = cast("AMQPBroker", self)
        queues = broker._queues()
        out = []
        with broker._con.call("counting jobs"):
            ch = consume_channel(broker)
            counts: dict[str, dict[str, int]] = {}
            delayed: dict[str, int] = {}
            for q in queues:
                counts[q] = broker.topology.declare_all(ch, q)
                delayed[q] = sum(broker.topology.delay_counts(broker._con, q).values())
            broker._con.conn.process_data_events(time_limit=0)
            n = broker.names
            for q in queues:
                c = counts[q]
                out.append(
                    QueueStats(
                        q,
                        ready=c[n.work(q)] + len(broker._buffer.get(q, ())),
                        scheduled=delayed[q],
                        running=sum(1 for d in broker._held.values() if d.queue == q),
                        dead=c[n.dead(q)],
                    )
                )
        return out

    def purge(self, queue: str) -> int:
        broker = cast("AMQPBroker", self)
        broker.names.check(queue)
        with broker._con.call("purging"):
            ch = consume_channel(broker)
            broker.topology.ensure(broker._con, queue)
            broker._con.conn.process_data_events(time_limit=0)
            purged = 0
            for d in broker._buffer.pop(queue, deque()):
                ch.basic_ack(d.tag)
                purged += 1
            for name in (
                broker.names.work(queue),
                *broker.topology.delay_counts(broker._con, queue),
            ):
                purged += ch.queue_purge(name).method.message_count
        return int(purged)

    def delete_queues(self) -> list[str]:
        """Delete every queue of this prefix, jobs and dead letters with them; their names.

        For tearing down a namespace (tests, a retired deployment): it destroys jobs.
        """
        broker = cast("AMQPBroker", self)
        queues = broker._queues()
        deleted = []
        with broker._con.call("deleting queues"):
            ch = broker._con.channel()
            for q in queues:
                for name in broker.names.all_of(q):
                    ch.queue_delete(name)
                    deleted.append(name)
            ch.queue_delete(broker.names.registry)
            deleted.append(broker.names.registry)
            broker.topology.forget()
        return deleted
