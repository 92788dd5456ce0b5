"""What the RabbitMQ backend says about itself: durable queues, and the consumer timeout.

A client cannot read RabbitMQ's settings, so the facts are the URL's options, the
timeout given on the command line and a redeclare of the queues that held jobs (as
``stats()`` does). None of these checks is about what a crash keeps (persistent
messages and publisher confirms always are), so the worker logs none of them, and at
its start nothing is probed at all.

This module imports no AMQP client: :mod:`.amqp_link` is imported when a URL is read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..checks import Check, Deployment, Status
from ..errors import BrokerConnectionError, SleipnirError
from .base import Broker, redact_url

__all__ = ["RABBITMQ_CONSUMER_TIMEOUT_S", "RabbitFacts", "check_rabbitmq", "diagnose"]


RABBITMQ_CONSUMER_TIMEOUT_S = 1800.0
"""RabbitMQ's default ``consumer_timeout`` (30 minutes)."""


@dataclass(frozen=True, slots=True)
class RabbitFacts:
    """A RabbitMQ broker's settings, as far as a client can know them."""

    queue_type: str
    """``classic`` or ``quorum`` (the URL's ``?queue_type=``)."""
    park_after_s: float
    """Jobs held longer are parked (acked, tracked apart); ``?park_after=``."""
    consumer_timeout_s: float
    """The server's ``consumer_timeout`` (rabbitmq.conf), as given: AMQP cannot read it."""
    renew_every_s: float
    longest_task_s: float | None
    """The longest task timeout; ``None`` when unknown or some task has none."""
    queues_error: str | None = None
    """Why redeclaring the queues that held jobs failed (a queue declared otherwise)."""
    queues: int = 0


def check_rabbitmq(facts: RabbitFacts) -> list[Check]:
    """Durable (quorum) queues, and no delivery held past the consumer timeout."""
    out = []
    if facts.queues_error is not None:
        out.append(
            Check(
                "rabbitmq queues",
                Status.FAIL,
                facts.queues_error,
                "delete the queue (its jobs first moved elsewhere) so the workers declare it "
                "durable again, or fix queue_type in the URL",
            )
        )
    elif facts.queue_type == "quorum":
        out.append(
            Check(
                "rabbitmq queues",
                Status.PASS,
                f"quorum, durable ({facts.queues} queues with jobs so far): persistent messages, "
                "publisher confirms, replicated to a majority of the nodes",
            )
        )
    else:
        out.append(
            Check(
                "rabbitmq queues",
                Status.WARN,
                f"{facts.queue_type}, durable ({facts.queues} queues with jobs so far): persistent "
                "messages survive a restart, but each queue lives on one node, and its jobs "
                "are out of reach while that node is down",
                "?queue_type=quorum in the broker URL on a cluster (new queue names, or drain "
                "and delete the classic ones first)",
            )
        )
    timeout = facts.consumer_timeout_s
    held = facts.park_after_s + facts.renew_every_s  # parking happens at a renewal
    longest = facts.longest_task_s
    name = "rabbitmq consumer_timeout"
    if held < timeout:
        out.append(
            Check(
                name,
                Status.PASS,
                f"{timeout:g} s: jobs held longer than park_after ({facts.park_after_s:g} s) are "
                "parked before it, so tasks may run longer",
            )
        )
    elif longest is not None and longest + facts.renew_every_s < timeout:
        out.append(
            Check(
                name,
                Status.PASS,
                f"{timeout:g} s: above the longest task timeout ({longest:g} s); parking "
                f"(park_after {facts.park_after_s:g} s) would come too late",
            )
        )
    else:
        runs = "a task without a timeout" if longest is None else f"a task of {longest:g} s"
        out.append(
            Check(
                name,
                Status.FAIL,
                f"{timeout:g} s, and {runs} is held unacked past it (park_after "
                f"{facts.park_after_s:g} s comes too late): RabbitMQ closes the worker's channel "
                "and delivers the job again while it still runs",
                f"?park_after={max(60.0, timeout / 2):g} in the broker URL, or a higher "
                "consumer_timeout (milliseconds) in rabbitmq.conf; give --consumer-timeout "
                "if yours is not the default",
            )
        )
    return out


def diagnose(open_broker: Callable[[], Broker], url: str, about: Deployment) -> list[Check]:
    """Reach RabbitMQ and redeclare the queues that held jobs, as ``stats()`` does."""
    if about.startup:
        return []
    from .amqp_link import parse_url

    fix = "check the URL, that RabbitMQ runs and that this host may reach it"
    try:
        _, options = parse_url(url)
        # stats() declares every queue that ever held a job with the backend's
        # arguments (durable, queue type); RabbitMQ refuses one declared otherwise.
        queues = len(open_broker().stats())
        error = None
    except BrokerConnectionError as exc:
        return [Check("broker", Status.FAIL, f"{exc}", fix)]
    except SleipnirError as exc:
        if "exists with other arguments" not in str(exc):
            return [Check("broker", Status.FAIL, f"{exc}", fix)]
        queues, error = 0, str(exc)
    timeout = about.consumer_timeout_s
    facts = RabbitFacts(
        queue_type=options.queue_type,
        park_after_s=options.park_after,
        consumer_timeout_s=RABBITMQ_CONSUMER_TIMEOUT_S if timeout is None else timeout,
        renew_every_s=about.renew_every_s,
        longest_task_s=about.longest_task_s,
        queues_error=error,
        queues=queues,
    )
    return [Check("broker", Status.PASS, redact_url(url)), *check_rabbitmq(facts)]
