"""What the RabbitMQ backend declares: queue names, their arguments, the registry.

This module owns the declaring of one prefix's queues on the server (the
layout is drawn in the module docstring of :mod:`sleipnir.brokers.amqp`, the
names are :class:`~sleipnir.brokers.amqp_link.Names`) and how a message is
published into them. It must not know about deliveries, leases or retries.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pika  # type: ignore[import-untyped]
import pika.exceptions  # type: ignore[import-untyped]

from ..errors import BrokerError
from .amqp_link import DELAY_BUCKETS_MS, Link, Names, Options

__all__ = ["DELAY_BUCKETS_MS", "MAX_PRIORITY", "Names", "Topology", "amqp_priority", "publish"]

MAX_PRIORITY = 9
SCAN_LIMIT = 100_000
"""At most this many messages of one queue are read by one scan (registry, dead letters)."""


def amqp_priority(priority: int) -> int:
    """The AMQP priority (0..9) of a job priority: 0 maps to 4; -4..5 stay distinct."""
    return max(0, min(MAX_PRIORITY, priority + 4))


def publish(
    ch: Any,
    routing_key: str,
    body: bytes,
    headers: dict[str, Any],
    priority: int,
    message_id: str | None,
    expiration_ms: int | None = None,
) -> None:
    """Publish persistent and mandatory on a confirm channel; returns once confirmed."""
    props = pika.BasicProperties(
        delivery_mode=2,
        message_id=message_id,
        priority=amqp_priority(priority),
        headers=headers,
        expiration=None if expiration_ms is None else str(expiration_ms),
        content_type="application/json",
    )
    ch.basic_publish("", routing_key, body, props, mandatory=True)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class Topology:
    """Declares the queues of one prefix, once per process, and keeps the registry.

    AMQP cannot list queues, so every queue name is also a message in the
    registry queue ``P:queues``; reading it (get without ack, then closing the
    channel, which gives the messages back) tells which queues exist. Two
    processes reading it at the same moment may each miss names the other holds
    and add one twice; readers drop the duplicates.
    """

    def __init__(self, options: Options) -> None:
        self.options = options
        self.names = Names(options.prefix)
        self.declared: set[str] = set()
        self.buckets: set[str] = set()
        self.registered: set[str] | None = None

    def queue_args(self, kind: str, queue: str, ttl_ms: int | None = None) -> dict[str, Any]:
        quorum = self.options.queue_type == "quorum"
        args: dict[str, Any] = {"x-queue-type": self.options.queue_type}
        if kind == "work" and not quorum:
            args["x-max-priority"] = MAX_PRIORITY
        if kind == "dead" and quorum:
            # Reading dead letters gives them back, which a quorum queue counts as a
            # failed delivery; past its delivery limit it would drop them.
            args["x-delivery-limit"] = 1_000_000_000
        if kind in ("delay", "parked"):
            args["x-dead-letter-exchange"] = ""
            args["x-dead-letter-routing-key"] = self.names.work(queue)
            if quorum:
                # Quorum queues dead-letter at most once unless told otherwise.
                args["x-dead-letter-strategy"] = "at-least-once"
                args["x-overflow"] = "reject-publish"
        if ttl_ms is not None:
            args["x-message-ttl"] = ttl_ms
        return args

    def declare(self, ch: Any, name: str, args: dict[str, Any]) -> int:
        """Declare a durable queue (idempotent); how many ready messages it holds."""
        try:
            ok = ch.queue_declare(name, durable=True, arguments=args)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code == 406:
                raise BrokerError(
                    f"RabbitMQ queue {name!r} exists with other arguments ({exc.reply_text}); "
                    f"was it declared by another tool or with another queue_type than "
                    f"{self.options.queue_type!r}?"
                ) from exc
            raise
        return int(ok.method.message_count)

    def declare_all(self, ch: Any, queue: str) -> dict[str, int]:
        """Declare the work, dead and parked queues of ``queue``; their ready counts by name."""
        n = self.names
        plan = {n.work(queue): "work", n.dead(queue): "dead", n.parked(queue): "parked"}
        return {
            name: self.declare(ch, name, self.queue_args(kind, queue))
            for name, kind in plan.items()
        }

    def bucket(self, ch: Any, queue: str, bucket_ms: int) -> str:
        """The delay queue of ``bucket_ms``, declared on first use (each one costs the server)."""
        name = self.names.delay(queue, bucket_ms)
        if name not in self.buckets:
            self.declare(ch, name, self.queue_args("delay", queue, bucket_ms))
            self.buckets.add(name)
        return name

    def route(self, ch: Any, queue: str, eta_at: float | None, now: float) -> str:
        """The queue a job goes to: the work queue when due, else the delay bucket that fits."""
        if eta_at is None or eta_at <= now:
            return self.names.work(queue)
        left_ms = (eta_at - now) * 1000
        bucket = max((b for b in DELAY_BUCKETS_MS if b <= left_ms), default=DELAY_BUCKETS_MS[0])
        return self.bucket(ch, queue, bucket)

    def delay_counts(self, link: Link, queue: str) -> dict[str, int]:
        """Jobs waiting in each delay queue of ``queue`` that exists (none are created)."""
        counts = {}
        scratch: Any = None
        try:
            for ms in DELAY_BUCKETS_MS:
                name = self.names.delay(queue, ms)
                if scratch is None or not scratch.is_open:
                    scratch = link.scratch()  # a failed passive declare closes its channel
                try:
                    ok = scratch.queue_declare(name, passive=True)
                except pika.exceptions.ChannelClosedByBroker as exc:
                    if exc.reply_code != 404:
                        raise
                    continue
                counts[name] = int(ok.method.message_count)
                self.buckets.add(name)
        finally:
            if scratch is not None and scratch.is_open:
                with contextlib.suppress(Exception):
                    scratch.close()
        return counts

    def ensure(self, link: Link, queue: str) -> None:
        """Declare ``queue``'s queues once per process and record it in the registry."""
        if queue in self.declared:
            return
        self.names.check(queue)
        ch = link.channel()
        self.declare_all(ch, queue)
        if self.registered is None or queue not in self.registered:
            self.registered = set(self.read_registry(link))
            if queue not in self.registered:
                publish(ch, self.names.registry, queue.encode(), {}, 0, None)
                self.registered.add(queue)
        self.declared.add(queue)

    def read_registry(self, link: Link) -> list[str]:
        """The queue names in the registry (each once)."""
        link.channel().queue_declare(self.names.registry, durable=True)
        ch = link.scratch()
        names: dict[str, None] = {}
        try:
            for _ in range(SCAN_LIMIT):
                method, _props, body = ch.basic_get(self.names.registry, auto_ack=False)
                if method is None:
                    break
                names[_text(body)] = None
        finally:
            with contextlib.suppress(Exception):
                ch.close()  # gives every message back
        return list(names)

    def forget(self) -> None:
        """Declare everything again on next use (after the queues were deleted)."""
        self.declared.clear()
        self.buckets.clear()
        self.registered = None
