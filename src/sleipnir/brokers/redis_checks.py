"""What the Redis backend says about itself: persistence, eviction and role.

The rules judge :class:`RedisFacts`, read from :meth:`RedisBroker.settings_report`.
``sleipnir doctor`` shows every check; the worker logs at start the ones about what
a crash or memory pressure keeps (:attr:`Check.warning`), so both say the same.

Eviction, as the key layout in :mod:`sleipnir.brokers.redis` has it: job hashes,
queues and leases (sorted-set scores, not key expiries) carry no TTL, so a
``volatile-*`` policy never evicts them; only what the result store writes with an
expiry (results, claims, slots, heartbeats) can go. Such a policy therefore matters
only on the server that keeps the results. ``allkeys-*`` policies evict anything.

This module imports no Redis client: it judges what it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..checks import Check, Deployment, Status, format_size
from ..errors import SleipnirError
from .base import Broker, redact_url

__all__ = ["RedisFacts", "check_redis", "diagnose", "read_redis"]


@dataclass(frozen=True, slots=True)
class RedisFacts:
    """A Redis server's settings (``None``: not readable) and where the results live."""

    appendonly: str | None
    appendfsync: str | None
    maxmemory_policy: str | None
    maxmemory: int | None
    role: str | None = "master"
    config_error: str | None = None
    """Why ``CONFIG GET`` was refused (managed services), or ``None``."""
    results_here: bool = True
    """Whether the App's result store is this same server."""


_REDIS_CONF = "in redis.conf (live: CONFIG SET {0} {1}, then CONFIG REWRITE to keep it)"


def _redis_fix(name: str, value: str) -> str:
    return f"`{name} {value}` " + _REDIS_CONF.format(name, value)


def _unread(name: str, facts: RedisFacts, durability: bool = True) -> Check:
    why = (
        f"CONFIG GET is refused ({facts.config_error}), as on most managed Redis services"
        if facts.config_error
        else "the server did not report it"
    )
    warning = None
    if durability:
        warning = (
            f"CONFIG GET is refused by this Redis (a managed service?): {name} could not be "
            "checked. Make sure it is 'always' (or 'everysec', losing about a second)."
            if name == "appendfsync" and facts.config_error
            else f"Redis {name} could not be checked: {why}. See docs/redis.md for the values."
        )
    return Check(
        f"redis {name}",
        Status.WARN,
        f"could not be checked: {why}",
        f"check {name} in the service's settings; see docs/redis.md for the values",
        warning,
    )


def check_redis(facts: RedisFacts) -> list[Check]:
    """Persistence, eviction and role of the Redis server that holds the jobs."""
    out = []
    if facts.role is not None and facts.role not in ("master", "primary"):
        out.append(
            Check(
                "redis role",
                Status.FAIL,
                f"this server is a {facts.role}: it refuses writes (READONLY), so no job can "
                "be enqueued or settled",
                "point the broker URL at the primary (or at an address that follows failover)",
            )
        )
    if facts.appendonly is None:
        out.append(_unread("appendonly", facts))
    elif facts.appendonly == "yes":
        out.append(Check("redis appendonly", Status.PASS, "yes: every write goes to the AOF"))
    else:
        out.append(
            Check(
                "redis appendonly",
                Status.FAIL,
                f"{facts.appendonly}: a restart of redis-server (crash, OOM kill, upgrade) loses "
                "every job accepted since the last snapshot",
                _redis_fix("appendonly", "yes"),
                f"Redis runs without AOF (appendonly {facts.appendonly}): a Redis restart loses "
                "every job accepted since the last snapshot. Set appendonly yes.",
            )
        )
    out.append(_check_appendfsync(facts))
    out.append(_check_policy(facts))
    out.append(_check_maxmemory(facts))
    return out


def _check_appendfsync(facts: RedisFacts) -> Check:
    name = "redis appendfsync"
    fsync = facts.appendfsync
    if fsync is None:
        return _unread("appendfsync", facts)
    if facts.appendonly == "no":
        return Check(name, Status.SKIP, f"{fsync}: not in effect without the append-only file")
    if fsync == "always":
        return Check(name, Status.PASS, "always: a job is on disk before enqueue returns")
    loss = "about the last second" if fsync == "everysec" else "up to about 30 s (the OS decides)"
    warning = (
        "Redis appendfsync is 'everysec': a crash of the Redis host may lose about a "
        "second of accepted jobs. Use 'always' to lose none."
        if fsync == "everysec"
        else f"Redis appendfsync is {fsync!r}: the OS decides when jobs reach the disk."
    )
    return Check(
        name,
        Status.WARN,
        f"{fsync}: a kill of redis-server loses nothing, but a crash or power loss of the "
        f"Redis host loses {loss} of accepted jobs",
        _redis_fix("appendfsync", "always") + " when no accepted job may be lost",
        warning,
    )


def _check_policy(facts: RedisFacts) -> Check:
    name = "redis maxmemory-policy"
    policy = facts.maxmemory_policy
    if policy is None:
        return _unread("maxmemory-policy", facts)
    fix = _redis_fix("maxmemory-policy", "noeviction")
    if policy == "noeviction":
        return Check(
            name, Status.PASS, "noeviction: a full Redis refuses new jobs with an error instead"
        )
    limit_off = facts.maxmemory == 0
    idle = " Not in effect while maxmemory is 0, but it would be once a limit is set." * limit_off
    said = f"Redis maxmemory-policy is {policy!r}: "
    if policy.startswith("allkeys"):
        return Check(
            name,
            Status.WARN if limit_off else Status.FAIL,
            f"{policy}: under memory pressure Redis evicts any key: waiting jobs "
            "(sleipnir:job:<id>), whole queues and their leases (sleipnir:ready:<q>, "
            f"sleipnir:lease:<q>) disappear without a trace.{idle}",
            fix,
            said + "under memory pressure Redis evicts any key, jobs and their leases "
            "included, and evicted jobs are lost without a trace. Set maxmemory-policy "
            "noeviction.",
        )
    if policy.startswith("volatile"):
        # Only what the result store writes carries an expiry (PEXPIREAT in result_put.lua
        # and the claim, slot and beat scripts); job hashes, queues and leases (sorted-set
        # scores, not key TTLs) have none, so no job is ever evicted by these policies.
        what = (
            "Of Sleipnir's keys only the stored results (sleipnir:result:<id>) carry an "
            "expiry; jobs, queues and leases carry none and are never evicted. "
        )
        if facts.results_here:
            return Check(
                name,
                Status.WARN if limit_off else Status.FAIL,
                f"{policy}: under memory pressure Redis evicts keys with an expiry. {what}"
                "Outcomes then vanish before their result_ttl: job.result() waits in vain "
                f"and status() says 'unknown'.{idle}",
                fix,
                said + "under memory pressure Redis evicts keys with an expiry, which here "
                "are the stored results: finished jobs then read 'unknown' and their results "
                "are gone. Set maxmemory-policy noeviction.",
            )
        return Check(
            name,
            Status.WARN,
            f"{policy}: evicts only keys with an expiry. {what}The results are stored "
            "elsewhere, so nothing of Sleipnir's here can be evicted; when no key with an "
            "expiry is left Redis refuses writes, as with noeviction.",
            fix,
            said + "it evicts only keys with an expiry, and no job, queue or lease has one "
            "(the results are stored elsewhere). Set maxmemory-policy noeviction.",
        )
    return Check(
        name,
        Status.FAIL,
        f"{policy}: an eviction policy Sleipnir does not know",
        fix,
        said + "an eviction policy Sleipnir does not know, which may evict jobs. Set "
        "maxmemory-policy noeviction.",
    )


def _check_maxmemory(facts: RedisFacts) -> Check:
    name = "redis maxmemory"
    if facts.maxmemory is None:
        return _unread("maxmemory", facts, durability=False)
    if facts.maxmemory > 0:
        return Check(
            name,
            Status.PASS,
            f"{format_size(facts.maxmemory)}: keep it above the worst backlog, the dead "
            "letters and result_ttl worth of results",
        )
    return Check(
        name,
        Status.WARN,
        "0 (no limit): Redis grows until the kernel's OOM killer stops it, and the queue is "
        "down until it is restarted",
        "`maxmemory 2gb` (below the host's RAM, sized for the backlog) with "
        "`maxmemory-policy noeviction` " + _REDIS_CONF.format("maxmemory", "2gb"),
    )


def read_redis(settings: Mapping[str, str | None], results_here: bool) -> RedisFacts:
    """:class:`RedisFacts` from :meth:`RedisBroker.settings_report`."""
    maxmemory = settings.get("maxmemory")
    return RedisFacts(
        appendonly=settings.get("appendonly"),
        appendfsync=settings.get("appendfsync"),
        maxmemory_policy=settings.get("maxmemory-policy"),
        maxmemory=int(maxmemory) if maxmemory is not None and maxmemory.isdigit() else None,
        role=settings.get("role"),
        config_error=settings.get("config-error"),
        results_here=results_here,
    )


def _same_server(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.hostname, pa.port, pa.path or "/0") == (pb.hostname, pb.port, pb.path or "/0")


def diagnose(open_broker: Callable[[], Broker], url: str, about: Deployment) -> list[Check]:
    """Reach the server, read its settings and judge them."""
    try:
        settings = open_broker().settings_report()
    except SleipnirError as exc:
        return [
            Check(
                "broker",
                Status.FAIL,
                f"{exc}",
                "check the URL, that Redis runs and that this host may reach it",
                f"could not check the broker's durability settings: {exc}",
            )
        ]
    results = about.results_url
    here = results is None or (
        _same_server(results, url) and urlsplit(results).scheme == urlsplit(url).scheme
    )
    return [Check("broker", Status.PASS, redact_url(url)), *check_redis(read_redis(settings, here))]
