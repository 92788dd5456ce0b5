"""Kill workers and supervisors with jobs in flight, and count: no accepted job is lost.

Scale is kept small for CI (a few hundred to a thousand short jobs per case);
``docs/reliability.md`` has the figures of a run.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import statistics
import subprocess
import sys
import time

import pytest

from ..integration.conftest import wait_until
from .harness import Bench, asdict_accounts, gone, report

pytestmark = pytest.mark.integration

LEASE = "3"
"""Short leases, so the jobs of a killed worker come back within seconds."""


def test_sigkill_one_of_four_workers_every_second(bench: Bench) -> None:
    jobs = 1000
    # 40 ms jobs on 4 x 2 slots: at least 5 s of work, so at least four kills.
    bench.enqueue("work", jobs, 0.04)
    sup = bench.supervisor("-p", "4", "-c", "2", "--lease", LEASE)
    bench.wait_running(4)
    started = time.monotonic()
    killed: set[int] = set()
    recoveries: list[float] = []
    next_kill = time.monotonic() + 1.0
    while True:
        wait_until(
            lambda at=next_kill: bench.pending() == 0 or time.monotonic() >= at,
            60,
            lambda: f"stuck\n{bench.log()[-3000:]}",
            interval=0.05,
        )
        if bench.pending() == 0:
            break
        pids = bench.running_pids()
        if len(pids) < 4:
            next_kill = time.monotonic() + 0.1
            continue
        name, victim = sorted(pids.items())[len(killed) % 4]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        killed.add(victim)
        next_kill = killed_at + 1.0
        wait_until(
            lambda name=name, victim=victim: bench.running_pids().get(name) not in (None, victim),
            30,
            lambda name=name: f"{name} was not restarted\n{bench.log()[-3000:]}",
            interval=0.02,
        )
        recoveries.append(time.monotonic() - killed_at)
    drained = time.monotonic() - started

    accounts = bench.account()
    assert accounts.lost == 0, accounts.lost_ids
    assert accounts.succeeded == jobs
    assert accounts.accepted == accounts.attempted == jobs
    assert len(killed) >= 3, "the jobs ran out before the workers were killed a few times"
    for job_id, runs in bench.runs_by_job().items():
        if len(runs) == 1:
            continue
        runs.sort(key=lambda r: r.attempt)
        assert all(r.attempt > 1 for r in runs[1:]), runs
        assert all(r.pid in killed for r in runs[:-1]), (job_id, runs, killed)
        record = bench.app.results.get(job_id)
        assert record is not None and record.attempt == runs[-1].attempt
    report(
        "kill one of four workers every second",
        backend=bench.kind,
        jobs=jobs,
        killed=len(killed),
        recover_median_s=round(statistics.median(recoveries), 2),
        recover_max_s=round(max(recoveries), 2),
        drain_s=round(drained, 1),
        **asdict_accounts(accounts),
    )
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(30) == 0, bench.log()[-3000:]


def test_sigkill_supervisor_and_workers_then_start_again(bench: Bench) -> None:
    jobs = 200
    bench.enqueue("work", jobs, 0.02)
    first = bench.supervisor("-p", "2", "-c", "4", "--lease", LEASE)
    bench.wait_running(2)
    wait_until(lambda: len(bench.runs()) >= 60, 60, lambda: bench.log()[-3000:])
    old = list(bench.running_pids().values())
    first.kill()
    for pid in old:
        os.killpg(pid, signal.SIGKILL)
    first.wait(10)
    wait_until(lambda: all(gone(p) for p in old), 10, "old workers still there")
    in_flight_at_kill = len(bench.runs())

    killed_at = time.monotonic()
    second = bench.supervisor("-p", "2", "-c", "4", "--lease", LEASE, name="supervisor-2")
    bench.wait_running(2)
    drained = bench.wait_drained(60)
    recovered = time.monotonic() - killed_at

    accounts = bench.account()
    assert accounts.lost == 0, accounts.lost_ids
    assert accounts.succeeded == jobs
    for runs in bench.runs_by_job().values():
        if len(runs) > 1:
            runs.sort(key=lambda r: r.attempt)
            assert all(r.pid in old for r in runs[:-1]), runs
            assert runs[-1].attempt > 1
    report(
        "kill -9 the supervisor and its workers, start again",
        backend=bench.kind,
        jobs=jobs,
        killed=len(old) + 1,
        runs_before_kill=in_flight_at_kill,
        drain_after_restart_s=round(recovered, 1),
        **asdict_accounts(accounts),
    )
    assert drained >= 0
    second.send_signal(signal.SIGTERM)
    assert second.wait(30) == 0, bench.log("supervisor-2")[-3000:]


def test_sigkill_supervisor_alone_its_workers_exit_and_give_back(bench: Bench) -> None:
    long_jobs = bench.enqueue("work", 2, 30.0)  # still running when the supervisor dies
    sup = bench.supervisor("-p", "2", "-c", "1", "--prefetch", "0", "--lease", "30")
    workers = list(bench.wait_running(2).values())
    wait_until(lambda: len(bench.runs()) == 2, 30, lambda: bench.log()[-3000:])

    sup.kill()
    sup.wait(10)
    killed_at = time.monotonic()
    wait_until(lambda: all(gone(p) for p in workers), 10, "workers outlived their supervisor")
    orphans_exited = time.monotonic() - killed_at
    # Given back at once (not after the 30 s lease): reservable again.
    wait_until(
        lambda: all(
            (i := bench.app.broker.job_info(j)) is not None and i.state.value == "ready"
            for j in long_jobs
        ),
        5,
        "the running jobs were not given back",
    )
    assert "the supervisor is gone" in bench.log()
    accounts = bench.account()
    assert accounts.lost == 0
    report(
        "kill -9 the supervisor alone",
        backend=bench.kind,
        workers=len(workers),
        orphans_exit_s=round(orphans_exited, 2),
        jobs_given_back=len(long_jobs),
    )


def test_sigterm_lets_a_two_second_job_finish_once(bench: Bench) -> None:
    (job_id,) = bench.enqueue("work", 1, 2.0)
    sup = bench.supervisor("-p", "1", "-c", "1", "--stop-timeout", "10")
    bench.wait_running(1)
    wait_until(lambda: len(bench.runs()) == 1, 30, lambda: bench.log()[-3000:])
    term_at = time.monotonic()
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(20) == 0, bench.log()
    took = time.monotonic() - term_at
    assert took > 1.0, f"exited {took:.2f}s after SIGTERM: the job cannot have finished"
    record = bench.app.results.get(job_id)
    assert record is not None
    assert record.state.value == "succeeded"
    assert record.attempt == 1
    assert bench.app.broker.job_info(job_id) is None  # acked: nothing left to run again
    assert [r.job_id for r in bench.runs()] == [job_id]
    assert "stopping the workers" in bench.log()
    report("SIGTERM during a 2 s job", backend=bench.kind, stop_s=round(took, 2), runs=1)


def test_a_task_that_kills_its_process_ends_dead_and_the_rest_finish(bench: Bench) -> None:
    (crasher,) = bench.enqueue("crash", 1)
    others = bench.enqueue("work", 200, 0.01)
    sup = bench.supervisor("-p", "2", "-c", "2", "--lease", "0.8")
    bench.wait_running(2)
    bench.wait_drained(90)

    letters = {d.id: d for d in bench.app.broker.dead_letters()}
    assert list(letters) == [crasher]
    reason = letters[crasher].reason
    assert "Crashed: the job's process exited with status 13" in reason, reason
    assert "(attempt 2 of 2, no retries left)" in reason, reason
    assert "(the job has crashed 2 processes of its own, after its lease ran out 1 time" in reason
    crash_runs = [r for r in bench.runs() if r.job_id == crasher]
    # Its worker died once; after the lost lease it ran apart, in processes of its own.
    assert [r.attempt for r in crash_runs] == [1, 2, 3]
    died = {crash_runs[0].pid}  # the only worker that ended in that run
    for job_id, runs in bench.runs_by_job().items():
        if job_id != crasher and len(runs) > 1:
            runs.sort(key=lambda r: r.attempt)
            assert all(r.pid in died for r in runs[:-1]), (runs, died)
    accounts = bench.account()
    assert accounts.lost == 0
    assert accounts.dead == 1
    assert accounts.succeeded == len(others)
    status = bench.status()
    assert status is not None
    assert all(c.state != "FATAL" for c in status.children), status
    restarts = sum(c.restarts for c in status.children)
    assert restarts == 1  # one worker died; the later crashes killed only their own process
    report(
        "a task that kills its process",
        backend=bench.kind,
        crashes=len(crash_runs),
        worker_restarts=restarts,
        **asdict_accounts(accounts),
    )
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(30) == 0


def test_a_worker_that_crash_loops_at_start_goes_fatal_without_a_hot_loop(
    sqlite_bench: Bench,
) -> None:
    bench = sqlite_bench
    sup = bench.supervisor("-p", "1", "--startretries", "2")
    (pid,) = bench.wait_running(1).values()
    # A broken deploy: the module no longer imports. The supervisor imported it
    # already; every new worker process fails at start.
    module = bench.dir / f"{bench.module}.py"
    module.write_text('raise RuntimeError("broken deploy")\n')
    os.kill(pid, signal.SIGKILL)
    wait_until(
        lambda: (s := bench.status()) is not None and s.children[0].state == "FATAL",
        60,
        lambda: bench.log()[-3000:],
    )
    log = bench.log()
    after_kill = log[log.index("killed by SIGKILL") :]
    starts = re.findall(r"(\d\d:\d\d:\d\d,\d\d\d) INFO \S+ w1: started", after_kill)
    assert len(starts) == 3, after_kill  # the restart, then startretries=2 more: no hot loop

    def seconds(t: str) -> float:
        h, m, s = t.replace(",", ".").split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)

    gaps = [seconds(b) - seconds(a) for a, b in itertools.pairwise(starts)]
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0, gaps  # backoff 1 s, then 2 s
    assert "failed start 1 of 3" in log and "failed start 2 of 3" in log
    assert "FATAL: failed to start 3 times in a row" in log
    status = bench.status()
    assert status is not None and "FATAL" in status.children[0].message

    shown = subprocess.run(
        [sys.executable, "-m", "sleipnir", "status", bench.spec, "--run-dir", str(bench.run_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=bench.dir,
    )
    assert shown.returncode == 1, shown.stdout + shown.stderr
    assert "FATAL" in shown.stdout

    sup.send_signal(signal.SIGTERM)
    assert sup.wait(30) == 0
    report("a worker that crash-loops at start", starts=len(starts), backoff_gaps_s=gaps)


def test_sighup_restarts_one_at_a_time_without_a_gap(sqlite_bench: Bench) -> None:
    bench = sqlite_bench
    bench.enqueue("work", 200, 0.01)
    sup = bench.supervisor("-p", "2", "-c", "2", "--startretries", "1")
    old = bench.wait_running(2)
    sup.send_signal(signal.SIGHUP)
    fewest = 2

    def replaced() -> bool:
        nonlocal fewest
        pids = bench.running_pids()
        fewest = min(fewest, len(pids))
        return len(pids) == 2 and not set(pids) & set(old) and bench.status().state == "running"  # type: ignore[union-attr]

    wait_until(replaced, 60, lambda: bench.log()[-3000:], interval=0.01)
    assert fewest >= 2, "fewer than two workers were RUNNING during the reload"
    bench.wait_drained(60)
    accounts = bench.account()
    assert accounts.lost == 0
    assert accounts.succeeded == 200

    # A reload onto code that cannot start stops at the first new process; the old
    # ones keep working.
    serving = bench.running_pids()
    (bench.dir / f"{bench.module}.py").write_text('raise RuntimeError("broken deploy")\n')
    sup.send_signal(signal.SIGHUP)
    wait_until(
        lambda: "reload stopped" in bench.log(), 60, lambda: bench.log()[-3000:], interval=0.05
    )
    assert bench.running_pids() == serving
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(30) == 0


def test_a_segfaulting_job_takes_no_batch_mate_with_it(any_bench: Bench) -> None:
    """The poison scenario: one job crashes its worker in native code, seven ordinary jobs
    are reserved beside it (``-c 4``, prefetch 4). The seven succeed, each run once, or
    twice when it was running in the process that died; the crasher ends dead with a
    reason that says it crashed, after one crash of its worker and the rest in processes
    of its own."""
    bench = any_bench
    (crasher,) = bench.enqueue("segfault", 1)  # retries=2
    others = bench.enqueue("work", 7, 0.05)
    started = time.monotonic()
    sup = bench.supervisor("-p", "1", "-c", "4", "--lease", "2")

    def settled() -> bool:
        a = bench.account()
        return a.succeeded == len(others) and a.dead == 1

    wait_until(settled, 60, lambda: f"{bench.account()}\n{bench.log()[-5000:]}", interval=0.1)
    took = time.monotonic() - started

    letters = {d.id: d for d in bench.app.broker.dead_letters()}
    assert list(letters) == [crasher]
    reason = letters[crasher].reason
    assert "Crashed: the job's process was killed by SIGSEGV" in reason, reason
    assert "(attempt 3 of 3, no retries left)" in reason, reason
    assert "(the job has crashed 3 processes of its own, after its lease ran out 1 time" in reason
    crash_runs = [r for r in bench.runs() if r.job_id == crasher]
    assert len(crash_runs) == 4  # once in the worker, then 3 tries in processes of its own
    worker_died = crash_runs[0].pid
    assert all(r.pid != worker_died for r in crash_runs[1:])
    for job_id in others:
        runs = bench.runs_by_job()[job_id]
        assert len(runs) in (1, 2), runs
        if len(runs) == 2:
            assert runs[0].pid == worker_died, (runs, worker_died)
    accounts = bench.account()
    assert accounts.lost == 0
    assert accounts.dead == 1
    status = bench.status()
    assert status is not None
    assert all(c.state != "FATAL" for c in status.children), status
    assert sum(c.restarts for c in status.children) == 1, status  # the worker died once
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(30) == 0, bench.log()
    report(
        "one segfaulting job among 7 (-c 4)",
        backend=bench.kind,
        seconds_to_settle=round(took, 1),
        ordinary_runs=sum(len(bench.runs_by_job()[j]) for j in others),
        crasher_runs=len(crash_runs),
        worker_deaths=1,
    )
