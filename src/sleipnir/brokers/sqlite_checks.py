"""What the SQLite backend says about itself: the file, its journal, its sync level, the disk.

Everything is read without creating the file: looking at a deployment must not
prepare someone else's schema. The checks judge :class:`SQLiteFacts`; none of them
is logged by the worker at start (the worker would just have opened the file).
"""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..checks import Check, Deployment, Status, format_size
from ..errors import SleipnirError
from .base import Broker, redact_url

__all__ = ["SQLiteFacts", "check_sqlite", "diagnose", "filesystem_type", "read_sqlite"]


@dataclass(frozen=True, slots=True)
class SQLiteFacts:
    """The SQLite file and what lies beneath it."""

    path: Path
    exists: bool
    journal_mode: str | None
    """As read from the file; ``None`` when it does not exist or cannot be read."""
    synchronous: str
    """The level every connection sets, from the URL's ``?sync=``: NORMAL or FULL."""
    free_bytes: int | None
    fs_type: str | None


DISK_FAIL_BYTES = 512 * 2**20
DISK_WARN_BYTES = 2 * 2**30

NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "fuse.sshfs", "glusterfs", "ceph", "lustre"}
)
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})


def check_sqlite(facts: SQLiteFacts) -> list[Check]:
    """The file's filesystem, journal mode, sync level and free disk."""
    out = []
    where = f"{facts.path}"
    move = "put the file on a local disk that persists: sqlite:///var/lib/<app>/jobs.db"
    fs = facts.fs_type
    if fs is None:
        out.append(Check("sqlite filesystem", Status.WARN, f"unknown for {where}"))
    elif fs in MEMORY_FILESYSTEMS:
        out.append(
            Check(
                "sqlite filesystem",
                Status.FAIL,
                f"{fs}: {where} lives in memory, and a reboot loses every job",
                move,
            )
        )
    elif fs in NETWORK_FILESYSTEMS or fs.startswith("fuse."):
        out.append(
            Check(
                "sqlite filesystem",
                Status.FAIL,
                f"{fs}: a network filesystem; SQLite's locks and WAL shared memory do not hold "
                "across hosts, so two workers may take the same job or corrupt the file",
                move + "; for workers on several hosts use Redis or RabbitMQ",
            )
        )
    elif fs == "overlay":
        out.append(
            Check(
                "sqlite filesystem",
                Status.WARN,
                f"overlay: {where} is in a container's writable layer, gone with the container",
                "mount a volume for the file's directory",
            )
        )
    else:
        out.append(Check("sqlite filesystem", Status.PASS, f"{fs}: {where}"))

    if not facts.exists:
        out.append(
            Check(
                "sqlite journal",
                Status.WARN,
                f"{where} does not exist yet: the first producer or worker creates it in WAL mode",
                "check that producers and workers use this same URL",
            )
        )
    elif facts.journal_mode == "wal":
        out.append(Check("sqlite journal", Status.PASS, "wal: readers never block the writer"))
    else:
        out.append(
            Check(
                "sqlite journal",
                Status.WARN,
                f"{facts.journal_mode or 'unreadable'}: not WAL, so no Sleipnir process has "
                "opened the file yet, or WAL could not be set",
                "start a worker on it (it switches the file to WAL) and run doctor again",
            )
        )

    if facts.synchronous == "FULL":
        out.append(Check("sqlite synchronous", Status.PASS, "FULL: every commit is fsynced"))
    else:
        out.append(
            Check(
                "sqlite synchronous",
                Status.WARN,
                f"{facts.synchronous}: a killed process loses nothing, but a power loss or "
                "kernel crash may lose the last commits",
                "add ?sync=full to the broker URL when no accepted job may be lost",
            )
        )

    free = facts.free_bytes
    if free is None:
        out.append(Check("sqlite disk", Status.WARN, "free space beside the file unknown"))
    elif free < DISK_WARN_BYTES:
        out.append(
            Check(
                "sqlite disk",
                Status.FAIL if free < DISK_FAIL_BYTES else Status.WARN,
                f"{format_size(free)} free beside the file: when it fills, enqueue fails and "
                "workers cannot settle",
                "free space or move the file to a larger disk; dead letters and results "
                "(result_ttl) grow it",
            )
        )
    else:
        out.append(Check("sqlite disk", Status.PASS, f"{format_size(free)} free beside the file"))
    return out


def filesystem_type(path: Path, mounts: Path = Path("/proc/self/mounts")) -> str | None:
    """The type of the filesystem holding ``path`` (its longest mount point prefix)."""
    target = str(path.resolve())
    best, kind = "", None
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind


def read_sqlite(url: str, mounts: Path = Path("/proc/self/mounts")) -> SQLiteFacts:
    """The SQLite file's facts, read without creating it."""
    from .sqlite import parse_sqlite_url

    path, synchronous, _ = parse_sqlite_url(url)
    path = path.absolute()
    exists = path.exists()
    journal = None
    if exists:
        # Read only: doctor must not create the schema in someone else's file.
        with contextlib.suppress(sqlite3.Error):
            uri = f"{path.resolve().as_uri()}?mode=ro"
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5.0)) as conn:
                journal = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    here = path.parent
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        free: int | None = shutil.disk_usage(here).free
    except OSError:
        free = None
    return SQLiteFacts(path, exists, journal, synchronous, free, filesystem_type(here, mounts))


def diagnose(open_broker: Callable[[], Broker], url: str, about: Deployment) -> list[Check]:
    """The file's checks, read from the URL alone: the broker is never opened here.

    None of them is a start-up warning, so at the worker's start nothing is read.
    """
    if about.startup:
        return []
    try:
        facts = read_sqlite(url)
    except SleipnirError as exc:
        return [Check("broker", Status.FAIL, f"{redact_url(url)}: {exc}", "fix the broker URL")]
    return [Check("broker", Status.PASS, f"{redact_url(url)}"), *check_sqlite(facts)]
