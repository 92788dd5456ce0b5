"""Signals and reloads of the supervisor: what SIGTERM, SIGINT, SIGHUP and SIGCHLD do."""

from __future__ import annotations

import contextlib
import logging
import selectors
import signal
import socket
import time
from collections import deque
from types import FrameType
from typing import TYPE_CHECKING, Any

from .states import (
    Kill,
    ProcessState,
    Stop,
)

if TYPE_CHECKING:
    from .runner import Supervisor

log = logging.getLogger("sleipnir.supervisor")

REPEAT_IGNORED = 1.0
"""Seconds after a first stop signal within which another counts as the same one."""


def install_signals(sup: Supervisor) -> Any:
    sup._wake_r, sup._wake_w = socket.socketpair()
    for end in (sup._wake_r, sup._wake_w):
        end.setblocking(False)
    assert sup._sel is not None
    sup._sel.register(sup._wake_r, selectors.EVENT_READ, None)
    old_fd = signal.set_wakeup_fd(sup._wake_w.fileno(), warn_on_full_buffer=False)
    watched = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)
    previous = {s: signal.getsignal(s) for s in watched}

    def handle(signum: int, frame: FrameType | None) -> None:
        if signum != signal.SIGCHLD:  # SIGCHLD only wakes the loop (through the fd)
            sup._signals.append(signum)

    for s in watched:
        signal.signal(s, handle)

    def restore() -> None:
        for s, h in previous.items():
            signal.signal(s, h)
        signal.set_wakeup_fd(old_fd)

    return restore


def drain_wakeups(sup: Supervisor) -> None:
    assert sup._wake_r is not None
    with contextlib.suppress(BlockingIOError):
        while sup._wake_r.recv(4096):
            pass


def handle_signals(sup: Supervisor) -> bool:
    """Act on the signals received; ``True`` once a forced stop was asked for."""
    forced = False
    while sup._signals:
        signum = sup._signals.popleft()
        if signum == signal.SIGHUP:
            begin_reload(sup)
            continue
        name = signal.Signals(signum).name
        now = time.monotonic()
        if sup._stop_signals and now - sup._first_stop_at < REPEAT_IGNORED:
            # One stop sent twice (a `timeout` or a terminal that signals both the
            # process and its group), not a person asking again.
            log.info("%s again within %gs of the first: ignored", name, REPEAT_IGNORED)
            continue
        sup._stop_signals += 1
        if sup._stop_signals == 1:
            sup._first_stop_at = now
            log.warning(
                "%s: stopping the workers; running jobs get %gs to finish"
                " (signal again to kill them now)",
                name,
                sup.config.stop_timeout,
            )
            sup._state = "stopping"
            sup._rolling.clear()
            sup._replacing = None
            for slot in sup.slots:
                sup._apply(slot, Stop())
        else:
            log.warning("%s again: killing the workers now; leases bring their jobs back", name)
            forced = True
            sup._state = "stopping"
            for slot in sup.slots:
                sup._apply(slot, Kill())
    return forced


def begin_reload(sup: Supervisor) -> None:
    if sup._state == "stopping":
        return
    olds = [s for s in sup.slots if not s.retiring]
    log.warning("SIGHUP: restarting %d workers one at a time", len(olds))
    sup._rolling = deque(olds)
    sup._state = "reloading"


def progress_reload(sup: Supervisor) -> None:
    while sup._state == "reloading":
        if sup._replacing is not None:
            old, new = sup._replacing
            # Up for startsecs is not enough here: the old one goes only once the
            # new one said it is ready to take jobs, so the pool never shrinks.
            if new.proc.state is ProcessState.RUNNING and new.ready:
                old.retiring = True
                sup._apply(old, Stop())
                sup._replacing = None
                continue
            if new.proc.state is ProcessState.FATAL:
                log.error(
                    "reload stopped: the new %s cannot start; the old workers keep running",
                    new.name,
                )
                new.retiring = True
                sup._apply(new, Stop())
                sup._replacing = None
                sup._rolling.clear()
                sup._state = "running"
            return
        if not sup._rolling:
            log.info("reload done")
            sup._state = "running"
            return
        old = sup._rolling.popleft()
        if old not in sup.slots or old.retiring:
            continue
        if old.proc.state in (ProcessState.STARTING, ProcessState.RUNNING):
            sup._replacing = (old, sup._add_slot())
        else:  # BACKOFF, FATAL: it serves nothing, so nothing to wait for
            old.retiring = True
            sup._apply(old, Stop())
            sup._add_slot()
