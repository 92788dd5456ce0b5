"""Chains and groups (:mod:`sleipnir.workflow`), as a hook: once the outcomes of a
batch are stored and before their jobs are acked, the next steps of chains and the
callbacks of groups are enqueued. A crash in between runs the step again (a repeat
enqueues nothing new); it never loses the next step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ...hooks import Hook
from ...results import JobState
from ...workflow import follow_up, has_workflow
from ..held import Outcome

if TYPE_CHECKING:
    from ..loop import Worker

__all__ = ["Workflows"]


class Workflows(Hook):
    def before_ack(self, worker: Worker, outcomes: Sequence[Outcome]) -> None:
        finished = [
            (o.held.job, o.state, o.value, o.error)
            for o in outcomes
            if o.held.job is not None
            and o.state is not JobState.RETRYING
            and not o.held.lost
            and has_workflow(o.held.job)
        ]
        if finished:
            follow_up(worker.app, finished)
