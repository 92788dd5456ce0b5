"""Workflows: chains (each step gets the previous result) and groups (with a callback).

::

    chain(fetch.s(url), resize.s(200), publish.s()).delay()   # publish(resize(fetch(url), 200))
    group(thumb.s(p) for p in paths).delay()                  # all at once; .results() in order
    group((thumb.s(p) for p in paths), callback=notify.s()).delay()   # notify([results...])

No coordinator runs anywhere: the plan travels in the jobs' headers, and the
worker that settles a step enqueues what comes next.

* A chain's first job carries the steps after it (header ``chain``). When a step
  succeeds, its worker enqueues the next step with the result as its first
  argument and the remaining steps in its header. When a step fails for good or
  is cancelled, the steps after it are stored as failed (or cancelled) without
  running. ``chain(...).delay()`` returns the last step's handle; every step's id
  is chosen up front (``handle.steps``), so each can be followed from the start.
* A group's members carry the group's id, their index, its size and the
  callback (header ``group``). A member that finished for good marks
  ``group:<id>:<index>`` in the result store; the worker whose mark completes
  the set enqueues the callback with the members' results, in order, as its
  first argument. If a member failed, the callback is stored as failed instead.

The next job is enqueued *before* the finished step is acked, under a claimed
key ``follow:<next id>`` (see :mod:`sleipnir.keys`): a step that runs again
after a crash enqueues nothing twice. So a chain is at least once per step,
like every job.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from .errors import EncodeError
from .job import Job, check_call, decode_value, encode_job, new_job_id
from .keys import KeyClaim
from .results import JobState, ResultRecord
from .storekeys import follow_key, group_key
from .task import JobHandle, Task

if TYPE_CHECKING:
    from .producer import Producer

__all__ = ["ChainHandle", "GroupHandle", "Signature", "chain", "group"]

log = logging.getLogger("sleipnir.worker")

CHAIN_HEADER = "chain"
GROUP_HEADER = "group"


class Step(msgspec.Struct, frozen=True, omit_defaults=True):
    """A call to make later, as it travels in a header."""

    id: str
    task: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    queue: str | None = None
    priority: int | None = None


class GroupInfo(msgspec.Struct, frozen=True, omit_defaults=True):
    id: str
    index: int
    size: int
    callback: Step | None = None


_steps = msgspec.json.Decoder(list[Step])
_group = msgspec.json.Decoder(GroupInfo)


@dataclass(frozen=True)
class Signature:
    """A task with its arguments, not yet enqueued: what ``task.s(...)`` returns."""

    task: Task[Any, Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None
    priority: int | None = None

    def set(self, *, queue: str | None = None, priority: int | None = None) -> Signature:
        """The same call on another queue or with another priority."""
        return Signature(
            self.task,
            self.args,
            self.kwargs,
            queue if queue is not None else self.queue,
            priority if priority is not None else self.priority,
        )

    def delay(self) -> JobHandle[Any]:
        """Enqueue this call alone."""
        return self.task.enqueue(self.args, self.kwargs, queue=self.queue, priority=self.priority)

    def __or__(self, other: Signature | Chain) -> Chain:
        return chain(self, other)

    def _step(self, job_id: str) -> Step:
        check_call(self.task.name, self.args, self.kwargs)  # it travels in a header, as text
        return Step(job_id, self.task.name, list(self.args), self.kwargs, self.queue, self.priority)

    def _check(self, prepended: int) -> None:
        self.task.check_arguments((None,) * prepended + self.args, self.kwargs)

    def _job(self, job_id: str, headers: dict[str, str]) -> Job:
        job = self.task.build(self.args, self.kwargs, queue=self.queue, priority=self.priority)
        return msgspec.structs.replace(job, id=job_id, headers={**job.headers, **headers})


@dataclass(frozen=True)
class Chain:
    steps: tuple[Signature, ...]

    def __or__(self, other: Signature | Chain) -> Chain:
        return chain(self, other)

    def delay(self) -> ChainHandle:
        """Enqueue the first step; the rest follow one by one. Returns the last step's handle."""
        first, *rest = self.steps
        app = first.task.app
        ids = [new_job_id() for _ in self.steps]
        headers = {}
        if rest:
            headers[CHAIN_HEADER] = msgspec.json.encode(
                [s._step(i) for s, i in zip(rest, ids[1:], strict=True)]
            ).decode()
        app.enqueue_jobs([first._job(ids[0], headers)])
        return ChainHandle(app, ids[-1], [JobHandle(app, i) for i in ids])


def chain(*steps: Signature | Chain) -> Chain:
    """Steps run one after another, each getting the previous result as first argument."""
    flat: list[Signature] = []
    for step in steps:
        if isinstance(step, Chain):
            flat.extend(step.steps)
        elif isinstance(step, Signature):
            flat.append(step)
        else:
            raise TypeError(f"chain() takes task.s(...) signatures, not {type(step).__name__}")
    if not flat:
        raise ValueError("chain() needs at least one step")
    flat[0]._check(0)
    for step in flat[1:]:
        step._check(1)
    return Chain(tuple(flat))


@dataclass(frozen=True)
class Group:
    members: tuple[Signature, ...]
    callback: Signature | None = None

    def delay(self) -> GroupHandle:
        """Enqueue every member in one broker call; the callback follows when all are done."""
        group_id = new_job_id()
        callback_id = new_job_id() if self.callback is not None else None
        callback = (
            self.callback._step(callback_id)
            if self.callback is not None and callback_id is not None
            else None
        )
        if not self.members:  # nothing to wait for: the callback gets []
            assert self.callback is not None and callback_id is not None  # group() checked
            app = self.callback.task.app
            job = self.callback._job(callback_id, {})
            app.enqueue_jobs([msgspec.structs.replace(job, args=[[], *job.args])])
            return GroupHandle(app, group_id, [], JobHandle(app, callback_id))
        app = self.members[0].task.app
        size = len(self.members)
        jobs = [
            m._job(
                new_job_id(),
                {
                    GROUP_HEADER: msgspec.json.encode(
                        GroupInfo(group_id, i, size, callback)
                    ).decode()
                },
            )
            for i, m in enumerate(self.members)
        ]
        handles = app.enqueue_jobs(jobs)
        return GroupHandle(
            app, group_id, handles, None if callback_id is None else JobHandle(app, callback_id)
        )


def group(members: Iterable[Signature], callback: Signature | None = None) -> Group:
    """Members run in parallel; ``callback`` (optional) gets the list of their results."""
    chosen = tuple(members)
    for m in chosen:
        if not isinstance(m, Signature):
            raise TypeError(f"group() takes task.s(...) signatures, not {type(m).__name__}")
        m._check(0)
    if callback is not None:
        callback._check(1)
    apps = {id(m.task.app) for m in chosen}
    if len(apps) > 1:
        raise ValueError("a group's members must belong to one App")
    if not chosen and callback is None:
        raise ValueError("group() needs at least one member or a callback")
    return Group(chosen, callback)


class ChainHandle(JobHandle[Any]):
    """The last step's handle, with every step's in :attr:`steps`."""

    def __init__(self, app: Producer, job_id: str, steps: list[JobHandle[Any]]) -> None:
        super().__init__(app, job_id)
        self.steps = steps


class GroupHandle:
    """A group's members and callback, enqueued."""

    def __init__(
        self,
        app: Producer,
        group_id: str,
        members: Sequence[JobHandle[Any]],
        callback: JobHandle[Any] | None,
    ) -> None:
        self.app = app
        self.id = group_id
        self.members = list(members)
        self.callback = callback

    def __repr__(self) -> str:
        return f"<GroupHandle {self.id} members={len(self.members)}>"

    def results(self, timeout: float | None = None) -> list[Any]:
        """Every member's result, in order; raises as :meth:`JobHandle.result` does."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        out = []
        for m in self.members:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            out.append(m.result(timeout=left))
        return out

    def statuses(self) -> list[JobState]:
        return [m.status() for m in self.members]

    def cancel(self) -> int:
        """Cancel every member that has not finished; how many were asked to stop."""
        return sum(m.cancel() for m in self.members)


# -- the worker's side ----------------------------------------------------------------


def has_workflow(job: Job) -> bool:
    return CHAIN_HEADER in job.headers or GROUP_HEADER in job.headers


def follow_up(
    app: Producer, finished: Sequence[tuple[Job, JobState, bytes | None, str | None]]
) -> None:
    """After the outcomes of ``finished`` are stored: enqueue what comes next.

    Each item is (job, final state, result value, error). Idempotent: a repeat
    (the step ran again, or a settle is retried) enqueues and stores nothing new.
    """
    now = app.clock.time()
    expires = now + app.result_ttl
    jobs: list[Job] = []
    records: list[ResultRecord] = []
    groups: dict[str, tuple[GroupInfo, Job]] = {}
    for job, state, value, error in finished:
        if CHAIN_HEADER in job.headers:
            try:
                rest = _steps.decode(job.headers[CHAIN_HEADER])
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.error("job %s: bad chain header, the chain ends here: %s", job.id, exc)
                rest = []
            if rest and state is JobState.SUCCEEDED:
                nxt, later = rest[0], rest[1:]
                headers = {CHAIN_HEADER: msgspec.json.encode(later).decode()} if later else {}
                result = decode_value(value) if value else None
                jobs.append(_job_for(app, nxt, [result], {**_trace(job), **headers}))
            elif rest:
                first_line = (error or state.value).split("\n", 1)[0]
                why = f"an earlier step, job {job.id} ({job.task}), {state.value}: {first_line}"
                records += [
                    ResultRecord(
                        s.id,
                        JobState.CANCELLED if state is JobState.CANCELLED else JobState.FAILED,
                        s.task,
                        s.queue or "",
                        0,
                        now,
                        expires,
                        error=why,
                    )
                    for s in rest
                ]
        if GROUP_HEADER in job.headers:
            try:
                info = _group.decode(job.headers[GROUP_HEADER])
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.error("job %s: bad group header: %s", job.id, exc)
                continue
            app.results.set_key(group_key(info.id, info.index), job.id.encode(), expires)
            groups[info.id] = (info, job)
    for info, last in groups.values():
        if info.callback is None:
            continue
        marks = app.results.get_keys([group_key(info.id, i) for i in range(info.size)])
        if any(m is None for m in marks):
            continue
        member_ids = [m.decode() for m in marks if m is not None]
        outcomes = [app.results.get(i) for i in member_ids]
        failed = [
            (i, r)
            for i, r in zip(member_ids, outcomes, strict=True)
            if r is None or r.state is not JobState.SUCCEEDED
        ]
        callback = info.callback
        if failed:
            i, r = failed[0]
            why = (r.error or r.state.value).split("\n", 1)[0] if r is not None else "no result"
            records.append(
                ResultRecord(
                    callback.id,
                    JobState.FAILED,
                    callback.task,
                    callback.queue or "",
                    0,
                    now,
                    expires,
                    error=f"group member {i} did not succeed: {why}",
                )
            )
            continue
        values = [decode_value(r.value) if r is not None and r.value else None for r in outcomes]
        jobs.append(_job_for(app, callback, [values], _trace(last)))
    for job in list(jobs):
        try:
            encode_job(job, app.max_payload_bytes)
        except EncodeError as exc:  # e.g. a group's results too big for one job
            jobs.remove(job)
            records.append(
                ResultRecord(
                    job.id, JobState.FAILED, job.task, job.queue, 0, now, expires,
                    error=f"could not be enqueued: {exc}",
                )
            )  # fmt: skip
    if records:
        app.results.put(records)
    if jobs:
        claims = [KeyClaim(follow_key(j.id), j.id, expires) for j in jobs]
        app.enqueue_jobs(jobs, claims)


def _trace(job: Job) -> dict[str, str]:
    """The job's trace context: the next step stays in the trace of the chain."""
    return {k: v for k, v in job.headers.items() if k in ("traceparent", "tracestate", "baggage")}


def _job_for(app: Producer, step: Step, prepend: list[Any], headers: dict[str, str]) -> Job:
    """The next job, built without checks: the worker that takes it checks it (and
    dead-letters it with the reason if its task is unknown or its arguments do not fit)."""
    task = app.tasks.get(step.task)
    return Job(
        id=step.id,
        task=step.task,
        args=[*prepend, *step.args],
        kwargs=step.kwargs,
        queue=step.queue or (task.options.queue if task else app.default_queue),
        priority=step.priority
        if step.priority is not None
        else (task.options.priority if task else 0),
        enqueued_at=app.clock.time(),
        headers=headers,
    )
