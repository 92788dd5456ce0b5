"""`make bench`: the embedded SQLite broker on this machine.

Measures, each in a fresh temporary directory:

* single enqueue: ``task.delay(i)`` one call at a time, each call timed with
  ``time.perf_counter_ns`` after a warm-up, with ``sync=normal`` (the default)
  and ``sync=full`` (an fsync per commit);
* bulk enqueue: ``task.map`` in batches of 1,000;
* drain: no-op jobs enqueued with ``map``, then ONE worker process
  (``sleipnir worker MODULE:app --burst -c 8``) timed from its start to its
  exit, with its peak RSS; an empty ``--burst`` run measures start-up alone.

    python bench/sqlite_bench.py [--quick] [--json PATH] [-c CONCURRENCY]

docs/benchmarks.md has the figures of the reference machine and how to read them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sleipnir import App, Task

# Targets from the issue.
TARGET_P50_US = 100.0
TARGET_DRAIN_JOBS_PER_S = 5000.0

MODULE_NAME = "bench_tasks"
MODULE = '''"""No-op task for bench/sqlite_bench.py (generated)."""
import os

from sleipnir import App

app = App(broker=os.environ["BENCH_BROKER"])


@app.task
def noop(i: int) -> None:
    return None
'''


@contextmanager
def fresh_dir(name: str) -> Iterator[Path]:
    """A new temporary directory for one measurement, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"sleipnir-bench-{name}-") as tmp:
        yield Path(tmp)


def make_app(url: str) -> tuple[App, Task[[int], None]]:
    app = App(broker=url)

    @app.task
    def noop(i: int) -> None:
        return None

    return app, noop


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    rank = min(len(sorted_values), max(1, math.ceil(q / 100 * len(sorted_values))))
    return float(sorted_values[rank - 1])


def enqueue_in_batches(task: Task[[int], None], n: int, batch: int) -> list[float]:
    """Enqueue ``n`` jobs with ``map``; return each batch's duration in seconds."""
    durations = []
    for start in range(0, n, batch):
        calls = [(i,) for i in range(start, min(n, start + batch))]
        began = time.perf_counter()
        task.map(calls)
        durations.append(time.perf_counter() - began)
    return durations


# -- measurements ---------------------------------------------------------------


def single_enqueue(sync: str, n: int, warmup: int) -> dict[str, Any]:
    with fresh_dir(f"single-{sync}") as tmp:
        app, noop = make_app(f"sqlite://{tmp}/jobs.db?sync={sync}")
        for i in range(warmup):  # connection, schema, statement cache, WAL file
            noop.delay(i)
        samples = [0] * n
        began = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter_ns()
            noop.delay(i)
            samples[i] = time.perf_counter_ns() - t0
        wall = time.perf_counter() - began
        app.close()
    samples.sort()
    return {
        "sync": sync,
        "calls": n,
        "warmup_calls": warmup,
        "jobs_per_s": n / wall,
        "mean_us": statistics.fmean(samples) / 1000,
        "p50_us": percentile(samples, 50) / 1000,
        "p90_us": percentile(samples, 90) / 1000,
        "p99_us": percentile(samples, 99) / 1000,
        "max_us": samples[-1] / 1000,
    }


def bulk_enqueue(n: int, batch: int) -> dict[str, Any]:
    with fresh_dir("bulk") as tmp:
        app, noop = make_app(f"sqlite://{tmp}/jobs.db")
        noop.map([(i,) for i in range(batch)])  # warm-up batch, not counted
        began = time.perf_counter()
        durations = enqueue_in_batches(noop, n, batch)
        wall = time.perf_counter() - began
        app.close()
    durations.sort()
    return {
        "jobs": n,
        "batch": batch,
        "seconds": wall,
        "jobs_per_s": n / wall,
        "batch_p50_ms": statistics.median(durations) * 1000,
        "batch_max_ms": durations[-1] * 1000,
    }


def worker_command(concurrency: int) -> list[str]:
    script = Path(sys.executable).with_name("sleipnir")
    prefix = [str(script)] if script.exists() else [sys.executable, "-m", "sleipnir"]
    return [*prefix, "worker", f"{MODULE_NAME}:app", "--burst", "-c", str(concurrency)]


def run_worker(workdir: Path, url: str, concurrency: int, timeout: float) -> dict[str, float]:
    """Run one ``--burst`` worker process in ``workdir``; its wall time, CPU time and peak RSS."""
    (workdir / f"{MODULE_NAME}.py").write_text(MODULE)
    pythonpath = os.pathsep.join(p for p in (str(workdir), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, BENCH_BROKER=url, PYTHONPATH=pythonpath)
    log_path = workdir / "worker.log"
    with log_path.open("wb") as log:
        began = time.perf_counter()
        proc = subprocess.Popen(
            worker_command(concurrency), cwd=workdir, env=env, stdout=log, stderr=log
        )
        killer = threading.Timer(timeout, proc.kill)
        killer.daemon = True
        killer.start()
        try:
            # os.wait4 reaps the child and returns its own rusage (peak RSS, CPU time):
            # the same counters as getrusage(RUSAGE_CHILDREN), for this one process.
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C: leave no worker behind
            proc.kill()
            proc.wait()
            raise
        finally:
            killer.cancel()
        elapsed = time.perf_counter() - began
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or elapsed > timeout:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"worker exited with {proc.returncode} after {elapsed:.1f} s:\n{tail}")
    return {
        "seconds": elapsed,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # KiB on Linux
    }


def count_outcomes(url: str) -> tuple[int, int, int]:
    """(jobs left in the queue, succeeded results, dead letters) in the database."""
    path = url.removeprefix("sqlite://").split("?", 1)[0]
    conn = sqlite3.connect(path)
    try:
        left = conn.execute("SELECT COUNT(*) FROM sleipnir_jobs").fetchone()[0]
        ok = conn.execute(
            "SELECT COUNT(*) FROM sleipnir_results WHERE state = 'succeeded'"
        ).fetchone()[0]
        dead = conn.execute("SELECT COUNT(*) FROM sleipnir_dead").fetchone()[0]
    finally:
        conn.close()
    return left, ok, dead


def startup(concurrency: int, runs: int) -> dict[str, Any]:
    times = []
    for _ in range(runs):
        with fresh_dir("startup") as tmp:
            url = f"sqlite://{tmp}/jobs.db"
            make_app(url)[0].broker.close()  # the schema exists, as it would in production
            times.append(run_worker(tmp, url, concurrency, timeout=60)["seconds"])
    return {"runs": runs, "seconds": statistics.median(times), "all_seconds": times}


def drain(n: int, concurrency: int, runs: int, startup_s: float) -> dict[str, Any]:
    rounds = []
    for _ in range(runs):
        with fresh_dir("drain") as tmp:
            url = f"sqlite://{tmp}/jobs.db"
            app, noop = make_app(url)
            enqueue_in_batches(noop, n, 1000)
            app.close()
            r = run_worker(tmp, url, concurrency, timeout=120)
            left, ok, dead = count_outcomes(url)
            if (left, ok, dead) != (0, n, 0):
                raise RuntimeError(
                    f"drain did not finish cleanly: {left} left, {ok} succeeded, {dead} dead"
                )
            r["jobs_per_s"] = n / r["seconds"]
            r["jobs_per_s_without_startup"] = n / max(1e-9, r["seconds"] - startup_s)
            r["jobs_per_cpu_s"] = n / r["cpu_s"]
            rounds.append(r)
    median = sorted(rounds, key=lambda r: r["jobs_per_s"])[len(rounds) // 2]
    return {
        "jobs": n,
        "concurrency": concurrency,
        "runs": runs,
        **median,
        "startup_s": startup_s,
        "peak_rss_mib": max(r["peak_rss_mib"] for r in rounds),
        "jobs_per_s_all_runs": [r["jobs_per_s"] for r in rounds],
    }


# -- report -----------------------------------------------------------------------


class OtherLoad:
    """CPU time that processes other than this bench used while it ran (Linux).

    All CPUs' busy time from /proc/stat, less this process's and its children's
    own CPU time: a figure well above zero means something else competed for the
    CPUs and the results are likely low.
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        busy_s = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
        t = os.times()
        ours_s = t.user + t.system + t.children_user + t.children_system
        return busy_s, ours_s, time.monotonic()

    def cpus_used_by_others(self) -> float | None:
        """Average number of CPUs kept busy by other processes since construction."""
        end = self._sample()
        if self.start is None or end is None:
            return None
        busy, ours, wall = (b - a for a, b in zip(self.start, end, strict=True))
        return max(0.0, (busy - ours) / max(wall, 1e-9))


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "tmpdir": tempfile.gettempdir(),
    }


def verdict(ok: bool) -> str:
    return "meets target" if ok else "MISSES target"


def print_report(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(
        f"Sleipnir SQLite broker: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, "
        f"SQLite {m['sqlite']}, files in {m['tmpdir']}"
    )
    rows: list[tuple[str, str, str]] = []
    for key in ("single_enqueue_normal", "single_enqueue_full"):
        s = r[key]
        target = (
            f"p50 < {TARGET_P50_US:.0f} µs: {verdict(s['p50_us'] < TARGET_P50_US)}"
            if s["sync"] == "normal"
            else ""
        )
        rows.append(
            (
                f"delay(i), sync={s['sync']}, {s['calls']:,} calls",
                f"{s['jobs_per_s']:,.0f} jobs/s; p50 {s['p50_us']:.1f} µs, "
                f"p99 {s['p99_us']:.1f} µs",
                target,
            )
        )
    b = r["bulk_enqueue"]
    rows.append(
        (
            f"map(), {b['jobs']:,} jobs in batches of {b['batch']:,}",
            f"{b['jobs_per_s']:,.0f} jobs/s; {b['batch_p50_ms']:.1f} ms per batch (p50)",
            "",
        )
    )
    s = r["startup"]
    rows.append(
        (
            "worker start-up, empty --burst run",
            f"{s['seconds'] * 1000:.0f} ms (median of {s['runs']})",
            "",
        )
    )
    d = r["drain"]
    rows.append(
        (
            f"drain {d['jobs']:,} no-op jobs, 1 process, -c {d['concurrency']}",
            f"{d['jobs_per_s']:,.0f} jobs/s ({d['seconds']:.2f} s, start-up included)",
            f"> {TARGET_DRAIN_JOBS_PER_S:,.0f} jobs/s: "
            f"{verdict(d['jobs_per_s'] > TARGET_DRAIN_JOBS_PER_S)}",
        )
    )
    rows.append(
        (
            "  same, start-up subtracted",
            f"{d['jobs_per_s_without_startup']:,.0f} jobs/s",
            "",
        )
    )
    rows.append(
        (
            "  worker CPU time (user + sys)",
            f"{d['cpu_s']:.2f} s = {d['jobs_per_cpu_s']:,.0f} jobs per CPU-second",
            "",
        )
    )
    rows.append(("  worker peak RSS", f"{d['peak_rss_mib']:.0f} MiB", ""))
    others = r["cpus_used_by_others"]
    if others is not None and others > 0.1:
        print(
            f"note: other processes kept {others:.2f} CPUs busy on average during the bench;"
            " they competed for the CPUs and these figures are likely low"
        )
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    print()
    for what, figure, target in rows:
        print(f"  {what:<{widths[0]}}  {figure:<{widths[1]}}  {target}".rstrip())
    if d["runs"] > 1:
        runs = ", ".join(f"{x:,.0f}" for x in d["jobs_per_s_all_runs"])
        print(f"\n  drain: median of {d['runs']} runs ({runs} jobs/s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (a few seconds)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument(
        "-c", "--concurrency", type=int, default=8, help="worker -c for the drain (default 8)"
    )
    args = parser.parse_args()
    quick = args.quick
    params = {
        "single_calls": 1000 if quick else 5000,
        "single_warmup": 200 if quick else 500,
        "bulk_jobs": 10_000 if quick else 50_000,
        "batch": 1000,
        "drain_jobs": 5000 if quick else 20_000,
        "drain_runs": 1 if quick else 3,
        "startup_runs": 1 if quick else 3,
        "concurrency": args.concurrency,
    }
    results: dict[str, Any] = {"machine": machine(), "quick": quick, "params": params}
    began = time.perf_counter()
    load = OtherLoad()
    n, w = params["single_calls"], params["single_warmup"]
    results["single_enqueue_normal"] = single_enqueue("normal", n, w)
    results["single_enqueue_full"] = single_enqueue("full", n, w)
    results["bulk_enqueue"] = bulk_enqueue(params["bulk_jobs"], params["batch"])
    results["startup"] = startup(args.concurrency, params["startup_runs"])
    results["drain"] = drain(
        params["drain_jobs"], args.concurrency, params["drain_runs"], results["startup"]["seconds"]
    )
    results["bench_seconds"] = time.perf_counter() - began
    results["cpus_used_by_others"] = load.cpus_used_by_others()
    results["targets"] = {
        "single_enqueue_p50_us": TARGET_P50_US,
        "drain_jobs_per_s": TARGET_DRAIN_JOBS_PER_S,
        "met": {
            "single_enqueue_p50": results["single_enqueue_normal"]["p50_us"] < TARGET_P50_US,
            "drain": results["drain"]["jobs_per_s"] > TARGET_DRAIN_JOBS_PER_S,
        },
    }

    print_report(results)
    others = results["cpus_used_by_others"]
    print(
        f"\n  ({results['bench_seconds']:.1f} s in all"
        + (f"; other processes used {others:.2f} CPUs meanwhile)" if others is not None else ")")
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        print(f"  figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
