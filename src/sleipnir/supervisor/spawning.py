"""The supervisor's processes: spawning a worker with its socket, asking it to stop,
reading what it says, reaping it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from .states import (
    Exited,
    Process,
    ProcessState,
    Ready,
    Spawned,
    SpawnFailed,
)
from .status import slug

if TYPE_CHECKING:
    from .runner import Supervisor

log = logging.getLogger("sleipnir.supervisor")


@dataclass(eq=False)
class _Slot:
    """One process of the pool, across the pids it has had."""

    proc: Process
    popen: subprocess.Popen[bytes] | None = None
    sock: socket.socket | None = None
    buffer: bytes = b""
    done_before: int = 0
    """Jobs settled by earlier pids of this slot."""
    done_now: int = 0
    busy: int | None = None
    concurrency: int | None = None
    ready: bool = False
    """The current pid said it is ready (its app imported, its worker built)."""
    retiring: bool = False
    """Being stopped for good (scale down, replaced in a reload); removed once STOPPED."""
    log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.proc.name


def spawn(sup: Supervisor, slot: _Slot) -> Spawned | SpawnFailed:
    parent, child = socket.socketpair()
    argv = [
        sys.executable,
        "-m",
        "sleipnir",
        *(["-v"] if sup.verbose else []),
        "worker",
        sup.spec,
        *sup.worker_args,
        "--supervisor-fd",
        str(child.fileno()),
        "--name",
        slot.name,
    ]
    if sup.log_dir is not None and slot.log_file is None:
        sup.log_dir.mkdir(parents=True, exist_ok=True)
        slot.log_file = (sup.log_dir / f"{slug(sup.spec)}.{slot.name}.log").open("ab")
    out = slot.log_file
    try:
        popen = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            pass_fds=(child.fileno(),),
            process_group=0,
        )
    except OSError as exc:
        parent.close()
        return SpawnFailed(f"cannot start {argv[0]}: {exc}")
    finally:
        child.close()
    parent.setblocking(False)
    slot.popen, slot.sock, slot.buffer = popen, parent, b""
    slot.done_before += slot.done_now
    slot.done_now, slot.busy, slot.ready = 0, None, False
    assert sup._sel is not None
    sup._sel.register(parent, selectors.EVENT_READ, slot)
    return Spawned(popen.pid)


def send_stop(sup: Supervisor, slot: _Slot, pid: int) -> None:
    sock = slot.sock
    if sock is not None:
        try:
            sock.send(b"stop\n")
            return
        except OSError:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)  # the socket is gone; the signal does the same


def read(sup: Supervisor, slot: _Slot) -> None:
    sock = slot.sock
    if sock is None:
        return
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            break
        except OSError:
            data = b""
        if not data:  # the child is gone or going; its exit is reaped by _reap
            unregister(sup, slot)
            break
        slot.buffer += data
    while b"\n" in slot.buffer:
        line, slot.buffer = slot.buffer.split(b"\n", 1)
        try:
            message: dict[str, Any] = json.loads(line)
        except ValueError:
            log.warning("%s: unreadable report %r", slot.name, line[:200])
            continue
        if "done" in message:  # shown at the next periodic write, not worth one now
            slot.done_now = int(message["done"])
            slot.busy = int(message.get("busy", 0))
        if "concurrency" in message:
            slot.concurrency = int(message["concurrency"])
        if message.get("ready"):
            slot.ready = True
            slot.busy = 0 if slot.busy is None else slot.busy
            sup._apply(slot, Ready())


def unregister(sup: Supervisor, slot: _Slot) -> None:
    if slot.sock is not None:
        if sup._sel is not None:
            with contextlib.suppress(KeyError, ValueError):
                sup._sel.unregister(slot.sock)
        slot.sock.close()
        slot.sock = None


def reap(sup: Supervisor) -> None:
    for slot in list(sup.slots):
        if slot.popen is None:
            continue
        code = slot.popen.poll()
        if code is None:
            continue
        read(sup, slot)  # its last counts
        unregister(sup, slot)
        slot.popen = None
        sup._apply(slot, Exited(code))


def close_slot(sup: Supervisor, slot: _Slot) -> None:
    unregister(sup, slot)
    if slot.log_file is not None:
        slot.log_file.close()
        slot.log_file = None


def drop_stopped(sup: Supervisor) -> None:
    for slot in list(sup.slots):
        if slot.retiring and slot.proc.state is ProcessState.STOPPED and slot.popen is None:
            close_slot(sup, slot)
            sup.slots.remove(slot)
            sup._dirty = True


def _kill_group(pid: int) -> None:
    """SIGKILL the worker's process group (it leads its own), or the worker alone."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
