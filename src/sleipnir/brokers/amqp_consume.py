"""The reserve path of the RabbitMQ broker: a consumer per queue with a bounded window,
basic.get for the rest, and what a delivery is admitted as."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .amqp_delivery import (
    H_ATTEMPT,
    H_ETA,
    H_LOST,
    H_PARKED,
    _Consumer,
    _Delivery,
    _float,
    _int,
    _Token,
)
from .amqp_link import probe
from .base import (
    Reservation,
)

if TYPE_CHECKING:
    from .amqp import AMQPBroker

log = logging.getLogger("sleipnir.brokers.amqp")


def consume_channel(broker: AMQPBroker) -> Any:
    """The consumer channel; a new one forgets every delivery of the old."""
    ch = broker._con.channel()
    if broker._con.generation != broker._generation:
        broker._generation = broker._con.generation
        broker._buffer.clear()
        broker._held.clear()
        broker._consumers.clear()
        broker._acks.clear()
    return ch


def on_message(broker: AMQPBroker, queue: str) -> Callable[..., None]:
    def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
        broker._buffer.setdefault(queue, deque()).append(
            _Delivery(
                queue, method.delivery_tag, method.consumer_tag, method.redelivered, props, body
            )
        )

    return on_message


def subscribe(broker: AMQPBroker, ch: Any, queue: str, limit: int) -> None:
    """Consume ``queue`` with a prefetch window (basic.qos) of the first ``limit`` asked.

    A worker asks first for its concurrency plus its prefetch, and later for
    what its acks freed, so the window stays that size. (basic.qos binds a
    consumer when it starts; growing it would mean a new consumer, and pika
    gives the old one's undelivered messages back, redelivered.)
    """
    if queue in broker._consumers:
        return
    ch.basic_qos(prefetch_count=max(1, limit))
    tag = ch.basic_consume(broker.names.work(queue), on_message(broker, queue))
    broker._consumers[queue] = _Consumer(tag, max(1, limit))


def window_full(broker: AMQPBroker, queue: str) -> bool:
    consumer = broker._consumers[queue]
    mine = sum(1 for d in broker._held.values() if d.consumer == consumer.tag)
    mine += sum(1 for d in broker._buffer.get(queue, ()) if d.consumer == consumer.tag)
    return mine >= consumer.prefetch


def basic_get(
    broker: AMQPBroker, ch: Any, queue: str, limit: int, lease: float, out: list[Reservation]
) -> None:
    """Fetch past a full window with basic.get, for a caller that never settles here.

    A worker settles, and its acks open the window again; a caller that holds
    its jobs and asks for more (a script, the contract tests) would otherwise
    wait for ever.
    """
    if queue in broker._settling or not window_full(broker, queue):
        return
    now = broker.clock.time()
    while len(out) < limit:
        method, props, body = ch.basic_get(broker.names.work(queue), auto_ack=False)
        if method is None:
            return
        d = _Delivery(queue, method.delivery_tag, "", method.redelivered, props, body)
        res = admit(broker, d, now, lease)
        if res is not None:
            out.append(res)


def sync(broker: AMQPBroker, ch: Any, queues: Sequence[str], want: int) -> None:
    """Take in the deliveries RabbitMQ has sent, or is sending, for ``queues``.

    A declare tells how many jobs are ready. While some are and the window has
    room, deliveries are on their way (the declare's answer may overtake them),
    so wait for them, up to 0.1 s: "nothing returned" then means "nothing ready".
    """
    queues = [q for q in queues if not window_full(broker, q)]
    if not queues:
        return  # every window is full: nothing can come before an ack
    ready = {q: ch.queue_declare(broker.names.work(q), passive=True) for q in queues}
    broker._con.conn.process_data_events(time_limit=0)
    coming = [q for q in queues if ready[q].method.message_count > 0 and not window_full(broker, q)]
    deadline = time.monotonic() + 0.1
    while coming and time.monotonic() < deadline:
        if sum(len(broker._buffer.get(q, ())) for q in queues) >= want:
            return
        broker._con.conn.process_data_events(time_limit=0.005)
        coming = [q for q in coming if not window_full(broker, q)]


def reserve_batch(
    broker: AMQPBroker, queues: Sequence[str], limit: int, lease: float, until: float
) -> list[Reservation]:
    out: list[Reservation] = []
    with broker._con.call("reserving", until):
        ch = consume_channel(broker)
        for q in queues:
            broker.topology.ensure(broker._con, q)
            subscribe(broker, ch, q, limit)
        broker._con.conn.process_data_events(time_limit=0)
        # Deliveries moved on (redelivered, not yet due, parked) may come straight
        # back ready; a few rounds make "nothing returned" mean "nothing ready".
        for _round in range(8):
            if sum(len(broker._buffer.get(q, ())) for q in queues) < limit - len(out):
                sync(broker, ch, queues, limit - len(out))
            moved = take(broker, queues, limit, lease, out)
            if not moved or len(out) >= limit:
                break
        for q in queues:
            if len(out) < limit:
                basic_get(broker, ch, q, limit, lease, out)
    return out


def take(
    broker: AMQPBroker, queues: Sequence[str], limit: int, lease: float, out: list[Reservation]
) -> int:
    """Admit buffered deliveries into ``out`` (queue order, then priority); how many moved."""
    now = broker.clock.time()
    moved = 0
    for q in queues:
        buf = broker._buffer.get(q)
        if not buf:
            continue
        ordered = sorted(buf, key=lambda d: -d.priority)  # stable: FIFO within one
        buf.clear()
        for d in ordered:
            if len(out) >= limit:
                buf.append(d)
                continue
            res = admit(broker, d, now, lease)
            if res is None:
                moved += 1
            else:
                out.append(res)
    return moved


def admit(broker: AMQPBroker, d: _Delivery, now: float, lease: float) -> Reservation | None:
    """A reservation for a delivery, or ``None`` when it was moved on instead."""
    h = d.headers
    before = max(0, _int(h.get(H_ATTEMPT)))
    lost = max(0, _int(h.get(H_LOST)))
    if h.get(H_PARKED):
        if not parked_copy_runs(broker, d):
            return None
        lost += 1  # its worker died while it ran; the copy counted that delivery
    elif d.redelivered:
        # Its worker died holding it: count that delivery, as a lost one too, then
        # serve the new copy.
        broker._move(d, attempt=before + 1, lost=lost + 1, eta_at=_float(h.get(H_ETA)))
        return None
    else:
        eta = _float(h.get(H_ETA))
        if eta is not None and eta > now + 0.001:
            broker._move(d, attempt=before, eta_at=eta)
            return None
    broker._held[d.tag] = d
    d.received_at = time.monotonic()
    return Reservation(
        id=d.id,
        queue=d.queue,
        body=d.body,
        attempt=before + 1,
        token=_Token(broker._generation, d.tag),
        lease_until=now + lease,
        priority=d.priority,
        lost=lost,
    )


def park(broker: AMQPBroker, d: _Delivery, attempt: int, lost: int) -> None:
    """Hand a long-held delivery back before RabbitMQ's consumer timeout (module docstring)."""
    ch = broker._con.ch
    ch.queue_declare(broker.names.running(d.id), exclusive=True)
    broker._republish(
        d,
        attempt=attempt,
        lost=lost,
        to=broker.names.parked(d.queue),
        parked=True,
        expiration_ms=broker._park_check_ms,
    )
    ch.basic_ack(d.tag)
    d.parked = True
    log.info("job %s has run %.0f s; parked its delivery", d.id, broker.options.park_after)


def parked_copy_runs(broker: AMQPBroker, d: _Delivery) -> bool:
    """Whether a parked copy that came back must run (its worker died); else it is moved on."""
    state = probe(broker._con, broker.names.running(d.id))
    if state in ("ok", "locked"):  # its worker (maybe this one) still runs it
        broker._republish(
            d,
            attempt=max(0, _int(d.headers.get(H_ATTEMPT))),
            to=broker.names.parked(d.queue),
            parked=True,
            expiration_ms=broker._park_check_ms,
        )
        broker._con.ch.basic_ack(d.tag)
        log.info("job %s still runs; parked its copy again", d.id)
        return False
    if probe(broker._con, broker.names.finished(d.id)) == "ok":
        broker._con.ch.queue_delete(broker.names.finished(d.id))
        broker._con.ch.basic_ack(d.tag)
        return False
    log.warning("parked job %s lost its worker; it runs again", d.id)
    return True


def recycle_buffer(broker: AMQPBroker) -> None:
    """Give back deliveries that waited in the buffer for too long (consumer timeout)."""
    limit = broker.options.park_after
    for buf in broker._buffer.values():
        old = [d for d in buf if time.monotonic() - d.received_at >= limit]
        for d in old:
            buf.remove(d)
            broker._move(d, attempt=max(0, _int(d.headers.get(H_ATTEMPT))))
