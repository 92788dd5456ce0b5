"""The supervisor's other promises, with real processes: scaling, titles, per-process logs."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from ..integration.conftest import wait_until
from .harness import Bench

pytestmark = pytest.mark.integration


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def test_a_backlog_adds_a_process_each_with_its_title_and_log(sqlite_bench: Bench) -> None:
    bench = sqlite_bench
    bench.enqueue("work", 300, 0.05)  # 15 s of work for one process with one slot
    logs = bench.dir / "logs"
    sup = bench.supervisor(
        "-p", "1", "--max-processes", "2", "-c", "1", "--scale-up-lag", "0.5",
        "--log-dir", str(logs),
    )  # fmt: skip
    pids = bench.wait_running(2, timeout=30)
    assert "scaling up to 2 processes: the oldest ready job waited" in bench.log()
    status = bench.status()
    assert status is not None
    assert (status.processes, status.min_processes, status.max_processes) == (2, 1, 2)

    for name, pid in pids.items():
        title = wait_until(
            lambda pid=pid: (t := _cmdline(pid)).startswith("sleipnir worker") and t,
            10,
            lambda pid=pid: f"title of {pid}: {_cmdline(pid)!r}",
        )
        assert f"sleipnir worker [{name}]: {bench.spec} queues=default busy=" in title
        assert "/1 done=" in title
        log = logs / f"{bench.spec.replace(':', '-')}.{name}.log"
        line = f"worker {pid} on"
        wait_until(
            lambda log=log, line=line: log.exists() and line in log.read_text(),
            10,
            f"no log of {name} in {log}",
        )
    # The workers' lines went to their own files, not to the supervisor's output.
    assert " on sqlite:" not in bench.log()

    sup.send_signal(signal.SIGTERM)
    assert sup.wait(30) == 0, bench.log()
    accounts = bench.account()
    assert accounts.lost == 0


def test_max_jobs_recycles_processes_without_counting_failed_starts(sqlite_bench: Bench) -> None:
    bench = sqlite_bench
    bench.enqueue("work", 100)
    sup = bench.supervisor("-p", "1", "-c", "2", "--max-jobs", "20")
    bench.wait_drained(60)

    def settled() -> bool:  # the last counts reach the status file once a second
        s = bench.status()
        return s is not None and sum(c.jobs_done for c in s.children) == 100

    wait_until(settled, 10, lambda: f"{bench.status()}\n{bench.log()[-3000:]}")
    status = bench.status()
    assert status is not None
    (child,) = status.children
    assert child.restarts >= 4  # 100 jobs, 20 per process
    assert child.failed_starts == 0
    assert child.state in ("STARTING", "RUNNING")
    assert bench.log().count("recycling after 20 jobs") >= 4
    assert "BACKOFF" not in bench.log() and "failed start" not in bench.log()
    accounts = bench.account()
    assert (accounts.succeeded, accounts.lost, accounts.duplicated) == (100, 0, 0)
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(30) == 0
