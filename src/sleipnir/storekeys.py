"""Every key name Sleipnir writes in a result store, in one place.

Claimed keys and limit slots live in one namespace per store; each family has a
prefix of its own, so two features never meet on one key. The broker's own
keys (Redis key layout, SQL tables) belong to each backend, not here.

=====================  ==========================================  =====================
family                 key                                         written by
=====================  ==========================================  =====================
idempotency            ``idempotency:<key>``                       ``enqueue(key=)``, HTTP
unique task            ``unique:<task>:<call fingerprint>``        ``unique_for=`` tasks
periodic tick          ``schedule:<name>:<tick>``                  the scheduler
cancel request         ``cancel:<job id>``                         ``JobHandle.cancel()``
progress               ``progress:<job id>``                       ``ctx.progress()``
run apart              ``apart:<job id>``                          the worker (crashes)
chain step             ``follow:<job id>``                         workflows
group member           ``group:<group id>:<index>``                workflows
web session revoked    ``web-session-revoked:<session id>``        the dashboard's logout
concurrency slot       ``concurrency:<task>``                      ``concurrency=`` tasks
rate slot              ``rate:<task>``                             ``rate_limit=`` tasks
=====================  ==========================================  =====================
"""

from __future__ import annotations

__all__ = [
    "apart_key",
    "cancel_key",
    "concurrency_slot",
    "follow_key",
    "group_key",
    "idempotency_key",
    "progress_key",
    "rate_slot",
    "session_revoked_key",
    "tick_key",
    "unique_key",
]


def idempotency_key(key: str) -> str:
    return f"idempotency:{key}"


def unique_key(task: str, call_fingerprint: str) -> str:
    return f"unique:{task}:{call_fingerprint}"


def tick_key(name: str, tick: float) -> str:
    """The key a scheduler claims to fire ``tick`` of the periodic task ``name``."""
    return f"schedule:{name}:{tick!r}"


def cancel_key(job_id: str) -> str:
    return f"cancel:{job_id}"


def progress_key(job_id: str) -> str:
    return f"progress:{job_id}"


def apart_key(job_id: str) -> str:
    """The count of a job's runs apart that ended with their worker dead."""
    return f"apart:{job_id}"


def follow_key(job_id: str) -> str:
    """Claimed once a chain step's next step was enqueued."""
    return f"follow:{job_id}"


def group_key(group_id: str, index: int) -> str:
    """Set when member ``index`` of a group finished (its job id)."""
    return f"group:{group_id}:{index}"


def session_revoked_key(session_id: str) -> str:
    return f"web-session-revoked:{session_id}"


def concurrency_slot(task: str) -> str:
    return f"concurrency:{task}"


def rate_slot(task: str) -> str:
    return f"rate:{task}"
