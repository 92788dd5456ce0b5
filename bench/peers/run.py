"""Sleipnir against Celery, RQ, Dramatiq, Huey and arq on the same Redis, in one run.

All systems talk to one Redis on loopback (``--redis``, default 127.0.0.1:6379), each
in a database of its own (see common.py); a database must be empty when the run
claims it, and only keys of the benchmark are ever deleted. Jobs are no-ops that
take an integer and return it. Measures, each figure the median of three runs
(interleaved across the systems, so a busy moment of the machine hits all alike):

1. single enqueue: one producer, each call timed after a warm-up (p50/p99, jobs/s);
2. bulk enqueue, where the system has one (Sleipnir ``map``, RQ ``enqueue_many``);
3. drain: N queued jobs, then the workers; timed from the first job taken until no
   job is left queued or unacked (or until a cap, then the rate of the jobs done by
   then), with one worker process and with two (matched concurrency); the workers'
   start-up is reported apart;
4. round trip on an idle worker: enqueue, then spin until the result is visible;
5. worker RSS (psutil, summed over the worker's process tree) at the end of the
   one-process drain;
6. the floor: redis-py PING round trip and a pipelined LPUSH rate.

Producers run in fresh subprocesses (``child.py``), workers via each system's CLI.

    .venv/bin/python bench/peers/run.py [--quick] [--json PATH] [--png PATH] [--only a,b]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

from common import DB, OWNED  # noqa: E402
from report import TARGETS, chart, markdown_table, print_report, ratios, table_rows  # noqa: E402

SYSTEMS = ["sleipnir", "celery", "rq", "dramatiq", "huey", "arq"]
PACKAGES = ["sleipnir", "celery", "kombu", "rq", "dramatiq", "huey", "arq"]
OTHER_PACKAGES = ["redis", "hiredis", "msgspec", "psutil", "matplotlib"]
CLAIM_KEY = "benchpeers-claim"


# -- the databases ----------------------------------------------------------------------


def client(system: str) -> redis.Redis:
    return redis.Redis.from_url(f"redis://{os.environ['BENCH_REDIS']}/{DB[system]}")


def delete_keys(r: redis.Redis, pattern: str, keep: tuple[bytes, ...] = ()) -> int:
    """Delete the keys matching ``pattern`` (SCAN + UNLINK), except ``keep``."""
    batch: list[bytes] = []
    n = 0
    for key in r.scan_iter(match=pattern, count=5000):
        if key in keep:
            continue
        batch.append(key)
        if len(batch) >= 5000:
            n += r.unlink(*batch)
            batch = []
    if batch:
        n += r.unlink(*batch)
    return n


def clean(system: str) -> None:
    """Delete what ``system`` left: its prefix, or every key of its own database."""
    r = client(system)
    delete_keys(r, OWNED[system], keep=(CLAIM_KEY.encode(),))
    r.close()


def claim_databases(systems: list[str]) -> None:
    """Make sure each peer's database is ours: empty, or marked by an earlier run of this bench."""
    for system in {*systems, "floor"}:
        r = client(system)
        if OWNED[system] == "*":
            if r.exists(CLAIM_KEY):
                delete_keys(r, "*")  # left by an earlier run of this benchmark that was killed
            elif r.dbsize():
                raise SystemExit(
                    f"Redis database {DB[system]} (for {system}) is not empty: someone else "
                    "uses it. Free it or choose other numbers in bench/peers/common.py."
                )
            r.set(CLAIM_KEY, f"bench/peers/run.py pid {os.getpid()}")
        else:
            delete_keys(r, OWNED[system])
        r.close()


def release_databases(systems: list[str]) -> None:
    for system in {*systems, "floor"}:
        r = client(system)
        delete_keys(r, OWNED[system])
        if OWNED[system] == "*":
            r.delete(CLAIM_KEY)
        r.close()


# -- subprocesses -----------------------------------------------------------------------


def child_env() -> dict[str, str]:
    pythonpath = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=pythonpath, PYTHONUNBUFFERED="1")


def run_child(system: str, phase: str, timeout: float = 120, **kwargs: Any) -> Any:
    """Run ``child.py`` for one measurement; its JSON answer."""
    proc = subprocess.run(
        [sys.executable, str(HERE / "child.py"), system, phase, json.dumps(kwargs)],
        cwd=HERE,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{system} {phase} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fill(system: str, n: int) -> None:
    """Queue ``n`` jobs for a drain from two producer processes at once (half each)."""
    procs = [
        subprocess.Popen(
            [sys.executable, str(HERE / "child.py"), system, "fill", json.dumps({"n": k})],
            cwd=HERE,
            env=child_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for k in (n // 2, n - n // 2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"{system} fill failed:\n{err.decode(errors='replace')[-4000:]}")


class Workers:
    """Worker processes of one system, started by its CLI, each in its own session."""

    def __init__(self, commands: list[list[str]], log_dir: Path, tag: str) -> None:
        self.began = time.perf_counter()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs = []
        for k, cmd in enumerate(commands):
            log = (log_dir / f"{tag}-{k}.log").open("wb")
            self.logs.append(log)
            proc = subprocess.Popen(
                cmd, cwd=HERE, env=child_env(), stdout=log, stderr=log, start_new_session=True
            )
            self.procs.append(proc)
        self.ps = [psutil.Process(p.pid) for p in self.procs]

    def any_exited(self) -> bool:
        return any(p.poll() is not None for p in self.procs)

    def rss_mib(self) -> tuple[float, int]:
        """Summed RSS of the worker processes and their children, and how many processes."""
        total, count = 0, 0
        for p in self.ps:
            try:
                tree = [p, *p.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for q in tree:
                try:
                    total += q.memory_info().rss
                    count += 1
                except psutil.NoSuchProcess:
                    pass
        return total / 2**20, count

    def tail(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{Path(log.name).read_text(errors='replace')[-2000:]}"
            for log in self.logs
        )

    def stop(self, timeout: float = 5.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)  # the worker's own session, started above
                p.wait()
        # pool children that outlived their parent (same session as the worker we started)
        for p in self.procs:
            with suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
        for log in self.logs:
            log.close()


# -- measurements -----------------------------------------------------------------------


def peer(system: str) -> ModuleType:
    return importlib.import_module(f"peer_{system}")


def drain(system: str, n: int, processes: int, cap_s: float, log_dir: Path) -> dict[str, Any]:
    """Fill ``n`` jobs, start the workers, poll until none is left; the rate and RSS."""
    mod = peer(system)
    r = client(system)
    clean(system)
    t0 = time.perf_counter()
    fill(system, n)
    fill_s = time.perf_counter() - t0
    if mod.queued(r, n) != n:
        raise RuntimeError(f"{system}: {mod.queued(r, n)} queued after filling {n}")
    workers = Workers(mod.worker_commands(processes), log_dir, f"{system}-drain{processes}")
    first_taken = end = None
    partial = False
    rss_end, nproc = 0.0, 0
    zero_seen = 0
    next_rss = 0.0
    try:
        while True:
            now = time.perf_counter()
            if workers.any_exited():
                raise RuntimeError(f"{system} worker died:\n{workers.tail()}")
            if first_taken is None and mod.queued(r, n) < n:
                first_taken = now
            if now >= next_rss:
                rss, count = workers.rss_mib()
                if count:
                    rss_end, nproc = rss, count
                next_rss = now + 0.25
            if mod.remaining(r, n) == 0:
                zero_seen += 1
                if zero_seen >= 2:  # twice, 5 ms apart: nothing in transit
                    end = now
                    rss_end, nproc = workers.rss_mib()
                    break
            else:
                zero_seen = 0
            if now - (first_taken or workers.began) > cap_s:
                partial = True
                end = now
                break
            time.sleep(0.005)
        left = mod.remaining(r, n)
    finally:
        workers.stop()
    done = n - left
    stored = mod.results_stored(r)
    if partial:
        # Stopped mid-drain: jobs taken but cut off by the stop have no result. Count
        # only jobs whose result was stored.
        done = min(done, stored)
    if stored < done:
        raise RuntimeError(f"{system}: {stored} results stored for {done} jobs done")
    clean(system)
    r.close()
    first = first_taken if first_taken is not None else end
    return {
        "jobs": n,
        "jobs_done": done,
        "partial": partial,
        "processes": processes,
        "fill_s": fill_s,
        "startup_s": first - workers.began,
        "seconds": end - first,
        "jobs_per_s": done / max(end - first, 1e-9),
        "jobs_per_s_with_startup": done / (end - workers.began),
        "rss_end_mib": rss_end,
        "rss_processes": nproc,
        "results_stored": stored,
    }


def round_trips(system: str, p: dict[str, Any], log_dir: Path) -> list[dict[str, Any]]:
    """One idle worker process; three round-trip runs against it."""
    mod = peer(system)
    clean(system)
    workers = Workers(mod.worker_commands(1), log_dir, f"{system}-rt")
    runs = []
    try:
        for _ in range(p["repeats"]):
            runs.append(
                run_child(
                    system, "round_trip", n=p["rt_jobs"], warmup=p["rt_warmup"], cap_s=p["rt_cap_s"]
                )
            )
    except Exception:
        print(workers.tail(), file=sys.stderr)
        raise
    finally:
        workers.stop()
    clean(system)
    return runs


def median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run whose ``key`` is the median, with every run's ``key`` and their spread."""
    values = [r[key] for r in runs]
    mid = sorted(runs, key=lambda r: r[key])[len(runs) // 2]
    med = statistics.median(values)
    return {
        **mid,
        "runs": values,
        "spread": (max(values) - min(values)) / med if med else 0.0,
    }


# -- the run ----------------------------------------------------------------------------


def versions() -> dict[str, str]:
    out = {}
    for name in [*PACKAGES, *OTHER_PACKAGES]:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine(info: dict[str, Any]) -> dict[str, Any]:
    cpu = platform.processor()
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis_server": str(info["redis_version"]),
    }


def redis_settings(r: redis.Redis) -> dict[str, str]:
    out = {}
    for name in ("appendonly", "appendfsync", "save", "maxmemory-policy", "io-threads"):
        with suppress(redis.ResponseError):
            out[name] = str(r.config_get(name).get(name))
    return out


def log(msg: str) -> None:
    print(msg, flush=True)


def measure(systems: list[str], p: dict[str, Any], log_dir: Path) -> dict[str, Any]:
    reps = p["repeats"]
    floors: list[dict[str, Any]] = []
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {s: {} for s in systems}

    def floor() -> None:
        floors.append(
            run_child(
                "floor",
                "floor",
                n=p["floor_calls"],
                warmup=p["warmup"],
                pipelines=p["floor_pipelines"],
                per_pipeline=p["floor_per_pipeline"],
            )
        )
        log(f"  floor: PING p50 {floors[-1]['ping']['p50_us']:.1f} µs")

    def step(name: str, fn: Any, which: list[str]) -> None:
        for rep in range(reps):
            for system in which:
                t = time.perf_counter()
                out = fn(system)
                raw[system].setdefault(name, []).append(out)
                log(f"  {name} {rep + 1}/{reps} {system}: {summary(name, out)} "
                    f"({time.perf_counter() - t:.1f} s)")  # fmt: skip

    floor()
    step(
        "single",
        lambda s: (clean(s), run_child(s, "single", n=p["single_calls"], warmup=p["warmup"]))[1],
        systems,
    )
    with_bulk = [s for s in systems if peer(s).bulk is not None]
    step(
        "bulk",
        lambda s: (clean(s), run_child(s, "bulk", n=p["bulk_jobs"], batch=p["batch"]))[1],
        with_bulk,
    )
    for s in with_bulk:
        clean(s)
    floor()

    def fill_for(system: str, processes: int) -> int:
        """``drain_jobs``; less for a system whose earlier drain stopped at the cap.

        Then 1.5 times what it would do within the cap at its best rate so far (doubled
        going from one process to two), so the queue still lasts about the whole
        window: the rate is the same, the fill takes less time.
        """
        done = [d for k in ("drain_1", "drain_2") for d in raw[system].get(k, [])]
        if not any(d["partial"] for d in done):
            return int(p["drain_jobs"])
        best = max(d["jobs_per_s"] * processes / d["processes"] for d in done)
        return min(int(p["drain_jobs"]), max(500, int(1.5 * best * p["drain_cap_s"])))

    for processes in (1, 2):
        step(
            f"drain_{processes}",
            lambda s, k=processes: drain(s, fill_for(s, k), k, p["drain_cap_s"], log_dir),
            systems,
        )
    floor()
    for system in systems:
        t = time.perf_counter()
        raw[system]["round_trip"] = round_trips(system, p, log_dir)
        rts = ", ".join(summary("round_trip", o) for o in raw[system]["round_trip"])
        log(f"  round_trip {system}: {rts} ({time.perf_counter() - t:.1f} s)")

    out: dict[str, Any] = {
        "floor": {
            **median_run([f["ping"] for f in floors], "p50_us"),
            "lpush_pipelined": median_run([f["lpush_pipelined"] for f in floors], "items_per_s"),
            "lpush": median_run([f["lpush"] for f in floors], "p50_us"),
            "evalsha": median_run([f["evalsha"] for f in floors], "p50_us"),
            "redis_py": floors[0]["redis_py"],
            "hiredis": floors[0]["hiredis"],
        },
        "systems": {},
    }
    for system in systems:
        mod = peer(system)
        r = raw[system]
        out["systems"][system] = {
            "name": mod.NAME,
            "settings": mod.SETTINGS,
            "single": median_run(r["single"], "p50_us"),
            "bulk": median_run(r["bulk"], "jobs_per_s") if "bulk" in r else None,
            "drain_1": median_run(r["drain_1"], "jobs_per_s"),
            "drain_2": median_run(r["drain_2"], "jobs_per_s"),
            "round_trip": median_run(r["round_trip"], "p50_us"),
        }
        # the paired PING of the median single-enqueue run, and the spread of its p50s
        out["systems"][system]["single"]["paired_ping_p50_runs"] = [
            x["paired_ping"]["p50_us"] for x in r["single"]
        ]
    return out


def summary(name: str, out: dict[str, Any]) -> str:
    if name == "single":
        return f"p50 {out['p50_us']:.0f} µs (PING {out['paired_ping']['p50_us']:.0f} µs)"
    if name == "round_trip":
        return f"p50 {out['p50_us']:.0f} µs n={out['n']}"
    if name.startswith("drain"):
        return (
            f"{out['jobs_per_s']:,.0f} jobs/s{' PARTIAL' if out['partial'] else ''}, "
            f"start-up {out['startup_s']:.2f} s, fill {out['fill_s']:.1f} s, "
            f"RSS {out['rss_end_mib']:.0f} MiB"
        )
    return f"{out['jobs_per_s']:,.0f} jobs/s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, one of each")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures here")
    parser.add_argument(
        "--png",
        type=Path,
        default=ROOT / "docs" / "img" / "bench-redis.png",
        metavar="PATH",
        help="bar chart (default docs/img/bench-redis.png; 'none' for no chart)",
    )
    parser.add_argument("--only", help="comma-separated subset of " + ",".join(SYSTEMS))
    parser.add_argument("--redis", default="127.0.0.1:6379", help="host:port of the Redis")
    parser.add_argument(
        "--from-json", type=Path, metavar="PATH", help="no run: report (and chart) a saved one"
    )
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        print_report(saved)
        if str(args.png) != "none":
            chart(saved, args.png)
            log(f"  chart written to {args.png}")
        return 0
    systems = args.only.split(",") if args.only else SYSTEMS
    for s in systems:
        if s not in SYSTEMS:
            parser.error(f"unknown system {s!r}")
    quick = args.quick
    params = {
        "repeats": 1 if quick else 3,
        "single_calls": 1000 if quick else 2000,
        "warmup": 200,
        "bulk_jobs": 10_000 if quick else 20_000,
        "batch": 1000,
        "drain_jobs": 5_000 if quick else 20_000,
        "drain_cap_s": 5.0 if quick else 6.0,
        "rt_jobs": 100 if quick else 500,
        "rt_warmup": 3,
        "rt_cap_s": 3.0 if quick else 6.0,
        "floor_calls": 2000,
        "floor_pipelines": 20 if quick else 50,
        "floor_per_pipeline": 1000,
    }

    def on_term(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    began = time.perf_counter()
    os.environ["BENCH_REDIS"] = args.redis
    log_dir = Path(tempfile.mkdtemp(prefix="sleipnir-peers-logs-"))
    r = redis.Redis.from_url(f"redis://{args.redis}/0")
    info = r.info("server")
    results: dict[str, Any] = {
        "command": " ".join(["bench/peers/run.py", *sys.argv[1:]]),
        "machine": machine(info),
        "redis_settings": redis_settings(r),
        "versions": versions(),
        "quick": quick,
        "params": params,
        "targets": TARGETS,
        "loadavg_start": os.getloadavg(),
    }
    r.close()
    log(f"Redis {info['redis_version']} on {args.redis}; worker logs in {log_dir}")
    claim_databases(systems)
    cpu0 = psutil.cpu_times()
    try:
        results.update(measure(systems, params, log_dir))
    finally:
        release_databases(systems)
    cpu1 = psutil.cpu_times()
    busy = sum(getattr(cpu1, f) - getattr(cpu0, f) for f in ("user", "nice", "system"))
    results["loadavg_end"] = os.getloadavg()
    results["bench_seconds"] = time.perf_counter() - began
    results["machine_cpu_busy"] = busy / results["bench_seconds"]
    results["ratios"] = ratios(results)
    results["markdown_table"] = markdown_table(table_rows(results))
    print_report(results)
    log(f"\n  ({results['bench_seconds']:.0f} s in all)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        log(f"  figures written to {args.json}")
    if str(args.png) != "none":
        args.png.parent.mkdir(parents=True, exist_ok=True)
        chart(results, args.png)
        log(f"  chart written to {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
