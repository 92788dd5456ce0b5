"""`make bench`: the embedded SQLite broker on this machine.

Measures single-enqueue latency (``task.delay``) with ``sync=normal`` and
``sync=full``, bulk enqueue (``task.map``), and the drain rate of no-op jobs by
one worker process (``sleipnir worker --burst``), with its peak RSS.

    python bench/sqlite_bench.py [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODULE = """
import os
from sleipnir import App
app = App(broker=os.environ["BENCH_BROKER"])

@app.task
def noop(i: int) -> None:
    return None
"""


def _app(url: str):
    from sleipnir import App

    app = App(broker=url)

    @app.task
    def noop(i: int) -> None:
        return None

    return app, noop


def single_enqueue(url: str, n: int) -> dict[str, float]:
    _, noop = _app(url)
    for i in range(200):  # warm-up: connection, schema, statement cache
        noop.delay(i)
    samples = []
    for i in range(n):
        started = time.perf_counter_ns()
        noop.delay(i)
        samples.append(time.perf_counter_ns() - started)
    samples.sort()
    total_s = sum(samples) / 1e9
    return {
        "jobs_per_s": n / total_s,
        "p50_us": samples[n // 2] / 1000,
        "p99_us": samples[int(n * 0.99)] / 1000,
    }


def bulk_enqueue(url: str, n: int, batch: int = 1000) -> dict[str, float]:
    _, noop = _app(url)
    started = time.perf_counter()
    for start in range(0, n, batch):
        noop.map([(i,) for i in range(start, min(n, start + batch))])
    return {"jobs_per_s": n / (time.perf_counter() - started), "batch": batch}


def drain(workdir: Path, url: str, n: int, concurrency: int) -> dict[str, float]:
    (workdir / "bench_tasks.py").write_text(MODULE)
    env = dict(os.environ, BENCH_BROKER=url, PYTHONPATH=str(workdir))
    command = [
        sys.executable,
        "-m",
        "sleipnir",
        "worker",
        "bench_tasks:app",
        "--burst",
        "-c",
        str(concurrency),
    ]

    def run() -> float:
        started = time.perf_counter()
        subprocess.run(
            command,
            cwd=workdir,
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        return time.perf_counter() - started

    startup = run()  # an empty queue: the cost of starting a worker process
    _, noop = _app(url)
    for start in range(0, n, 1000):
        noop.map([(i,) for i in range(start, min(n, start + 1000))])
    elapsed = run()
    rss_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "jobs": n,
        "concurrency": concurrency,
        "seconds": elapsed,
        "startup_s": startup,
        "jobs_per_s": n / elapsed,
        "jobs_per_s_without_startup": n / max(1e-9, elapsed - startup),
        "peak_rss_mib": rss_kib / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    n_single = 2000 if args.quick else 5000
    n_bulk = 20_000 if args.quick else 50_000
    n_drain = 10_000 if args.quick else 20_000

    results: dict[str, object] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
        }
    }
    with tempfile.TemporaryDirectory(prefix="sleipnir-bench-") as tmp:
        root = Path(tmp)
        normal = f"sqlite://{root}/normal.db"
        full = f"sqlite://{root}/full.db?sync=full"
        results["single_enqueue_normal"] = single_enqueue(normal, n_single)
        results["single_enqueue_full"] = single_enqueue(full, n_single // 5)
        results["bulk_enqueue"] = bulk_enqueue(f"sqlite://{root}/bulk.db", n_bulk)
        drain_dir = root / "drain"
        drain_dir.mkdir()
        results["drain"] = drain(drain_dir, f"sqlite://{drain_dir}/jobs.db", n_drain, 8)

    m = results["machine"]
    print(f"Sleipnir on SQLite {m['sqlite']}, Python {m['python']}, {m['cpus']} CPUs")
    for name, label in (
        ("single_enqueue_normal", "delay(), sync=normal"),
        ("single_enqueue_full", "delay(), sync=full"),
    ):
        r = results[name]
        print(
            f"  {label:<28} {r['jobs_per_s']:>9.0f} jobs/s   p50 {r['p50_us']:>7.1f} µs"
            f"   p99 {r['p99_us']:>7.1f} µs"
        )
    b = results["bulk_enqueue"]
    print(f"  {'map(), batches of 1000':<28} {b['jobs_per_s']:>9.0f} jobs/s")
    d = results["drain"]
    print(
        f"  {'drain, 1 worker process':<28} {d['jobs_per_s']:>9.0f} jobs/s   "
        f"({d['jobs']} no-op jobs in {d['seconds']:.2f} s, -c {d['concurrency']}; "
        f"{d['jobs_per_s_without_startup']:.0f} jobs/s without the {d['startup_s']:.2f} s "
        f"start-up; peak RSS {d['peak_rss_mib']:.0f} MiB)"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
