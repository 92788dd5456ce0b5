"""Where Sleipnir's time goes on Redis: the figures behind docs/benchmarks-redis.md.

    .venv/bin/python bench/peers/profile_sleipnir.py [--py-spy]

On the benchmark's Redis (``--redis``, default 127.0.0.1:6379; database 9, key prefix
``benchpeers-prof``, deleted afterwards), measures:

1. enqueue, layer by layer, each timed side by side with a PING: a raw-socket PING,
   redis-py PING, EVALSHA of ``return 1``, EVALSHA of the enqueue script with fixed
   arguments, ``broker.enqueue``, ``task.delay``; the Python-only steps alone; the
   script's server-side cost (INFO commandstats);
2. the drain: Redis CPU and worker CPU per job (INFO cpu, psutil), per-script
   server cost, and, with --py-spy, the worker's hottest functions (py-spy, own time);
3. one idle round trip, phase by phase: the worker runs in a subprocess with its
   broker methods wrapped to stamp CLOCK_MONOTONIC (system-wide), the producer stamps
   enqueue and the moment it sees the result; the median of each phase is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import psutil
import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import child_env, delete_keys  # noqa: E402

PREFIX = "benchpeers-prof"
DB = 9


def clean_db(r: redis.Redis) -> None:
    delete_keys(r, f"{PREFIX}:*")


def cmdstats(r: redis.Redis) -> dict[str, dict[str, float]]:
    return {k: dict(v) for k, v in r.info("commandstats").items()}


def delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> Any:
    """Command stats between two reads (never CONFIG RESETSTAT on a shared server).

    They count every client of the server: other work on it shows here too.
    """
    out = {}
    for k, v in after.items():
        b = before.get(k, {"calls": 0, "usec": 0})
        calls = v["calls"] - b["calls"]
        if calls > 0:
            usec = v["usec"] - b["usec"]
            out[k] = {"calls": calls, "usec": usec, "usec_per_call": usec / calls}
    return out


def med_us(samples: list[int]) -> float:
    return statistics.median(samples) / 1000


def paired(fn: Any, ping: Any, n: int = 3000, warmup: int = 300) -> tuple[float, float]:
    """(median of fn, median of the PING timed just before each fn call), microseconds."""
    for i in range(warmup):
        ping()
        fn(i)
    a, b = [], []
    for i in range(n):
        t0 = time.perf_counter_ns()
        ping()
        t1 = time.perf_counter_ns()
        fn(i)
        t2 = time.perf_counter_ns()
        b.append(t1 - t0)
        a.append(t2 - t1)
    return med_us(a), med_us(b)


def solo(fn: Any, n: int = 20000) -> float:
    """Mean microseconds of a CPU-only call."""
    for i in range(500):
        fn(i)
    t0 = time.perf_counter_ns()
    for i in range(n):
        fn(i)
    return (time.perf_counter_ns() - t0) / n / 1000


def enqueue_profile(address: str) -> None:
    from sleipnir import App
    from sleipnir.brokers.base import Envelope
    from sleipnir.job import encode_job, new_job_id

    host, port = address.split(":")
    app = App(broker=f"redis://{address}/{DB}?prefix={PREFIX}")

    @app.task
    def noop(i: int) -> int:
        return i

    r = redis.Redis(host=host, port=int(port), db=DB)
    clean_db(r)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def raw_ping(i: int = 0) -> None:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        sock.recv(64)

    ping = r.ping
    broker = app.broker
    job = noop.build((1,))
    body = encode_job(job)
    one = r.script_load("return 1")
    sha = broker._enqueue.sha  # the script Sleipnir loads (EVALSHA, EVAL on NOSCRIPT)
    r.execute_command("EVAL", broker._enqueue.text, 0, PREFIX, "1.0")
    rows = [
        ("PING, raw socket (no client library)", raw_ping),
        ("PING, redis-py", lambda i: ping()),
        ("EVALSHA 'return 1', redis-py", lambda i: r.execute_command("EVALSHA", one, 0)),
        (
            "EVALSHA enqueue.lua, fixed args, redis-py",
            lambda i: r.execute_command(
                "EVALSHA", sha, 0, PREFIX, "1.0", f"raw{i}", "default", 0, "", body
            ),
        ),
        (
            "broker.enqueue([envelope])",
            lambda i: broker.enqueue(
                [Envelope(id=f"b{i}", queue="default", body=body, priority=0, eta_at=None)]
            ),
        ),
        ("noop.delay(i)", noop.delay),
    ]
    print("\n1. enqueue, each call timed right after a paired redis-py PING (medians, µs)")
    for name, fn in rows:
        a, b = paired(fn, lambda: ping())
        print(f"   {name:<44} {a:7.1f}   (paired PING {b:5.1f}, ratio {a / b:4.2f}x)")
    print("   Python-only steps (mean µs per call):")
    for name, fn in [
        ("task.build((i,)) (all of the below)", lambda i: noop.build((i,))),
        ("  check_arguments (inspect.Signature.bind)", lambda i: noop.check_arguments((i,), {})),
        ("  new_job_id()", lambda i: new_job_id()),
        ("encode_job(job) (msgspec)", lambda i: encode_job(job)),
        ("app._envelopes([job])", lambda i: app._envelopes([job])),
    ]:
        print(f"   {name:<44} {solo(fn):7.2f}")
    clean_db(r)
    before = cmdstats(r)
    for i in range(5000):
        noop.delay(i)
    stats = delta(before, cmdstats(r))
    ev = stats["cmdstat_evalsha"]
    print(
        f"   server side, enqueue.lua: {ev['usec_per_call']:.1f} µs of Redis CPU per call; "
        "inside it (µs per call): "
        + ", ".join(
            f"{k.removeprefix('cmdstat_')} {v['usec_per_call']:.1f}"
            for k, v in sorted(stats.items())
            if k != "cmdstat_evalsha" and v["calls"] >= 5000
        )
    )
    before = cmdstats(r)
    for _ in range(5000):
        r.execute_command("EVALSHA", one, 0)
    ev = delta(before, cmdstats(r))["cmdstat_evalsha"]
    print(f"   server side, EVALSHA 'return 1': {ev['usec_per_call']:.1f} µs per call")
    clean_db(r)
    app.close()
    sock.close()


def worker_cmd(processes: int, burst: bool) -> list[list[str]]:
    cmd = [str(Path(sys.executable).with_name("sleipnir")), "worker", "prof_tasks:app", "-c", "8"]
    return [cmd + (["--burst"] if burst else [])] * processes


TASKS = f"""
import os
from sleipnir import App
app = App(broker="redis://" + os.environ["BENCH_REDIS"] + "/{DB}?prefix={PREFIX}")

@app.task
def noop(i: int) -> int:
    return i
"""


def drain_profile(address: str, workdir: Path, n: int, use_py_spy: bool) -> None:
    host, port = address.split(":")
    r = redis.Redis(host=host, port=int(port), db=DB)
    env = dict(child_env(), BENCH_REDIS=address, PYTHONPATH=str(workdir))
    sys.path.insert(0, str(workdir))
    os.environ["BENCH_REDIS"] = address
    import prof_tasks

    print(f"\n2. drain of {n:,} jobs, sleipnir worker --burst -c 8")
    for processes in (1, 2):
        clean_db(r)
        for start in range(0, n, 1000):
            prof_tasks.noop.map([(i,) for i in range(start, min(n, start + 1000))])
        before = cmdstats(r)
        cpu0 = r.info("cpu")
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(c, cwd=workdir, env=env, stderr=subprocess.DEVNULL)
            for c in worker_cmd(processes, True)
        ]
        spy = None
        if use_py_spy and processes == 1:
            raw = workdir / "spy.txt"
            spy = subprocess.Popen(
                [
                    *(str(Path(sys.executable).with_name("py-spy")), "record", "--format", "raw"),
                    *("--gil", "-r", "200", "-o", str(raw), "--pid", str(procs[0].pid)),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        ps = [psutil.Process(p.pid) for p in procs]
        cpu_w = [0.0] * len(ps)
        while any(p.poll() is None for p in procs):
            for k, p in enumerate(ps):
                try:
                    c = p.cpu_times()
                    cpu_w[k] = c.user + c.system
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.02)
        wall = time.perf_counter() - t0
        cpu1 = r.info("cpu")
        redis_cpu = (
            cpu1["used_cpu_user"]
            + cpu1["used_cpu_sys"]
            - cpu0["used_cpu_user"]
            - cpu0["used_cpu_sys"]
        )
        stats = delta(before, cmdstats(r))
        ev = stats.get("cmdstat_evalsha", {"usec": 0, "calls": 0})
        print(
            f"   {processes} process(es): {n / wall:,.0f} jobs/s; Redis CPU "
            f"{redis_cpu / n * 1e6:.1f} µs/job ({redis_cpu / wall * 100:.0f}% of a CPU), "
            "of which EVALSHA "
            f"{ev['usec'] / n:.1f} µs/job in {ev['calls']:,} calls ({n / max(1, ev['calls']):.1f}"
            f" jobs per call); worker CPU ~{sum(cpu_w) / n * 1e6:.1f} µs/job "
            f"({sum(cpu_w) / wall * 100:.0f}% of a CPU, sampled)"
        )
        inner = sorted(
            ((k.removeprefix("cmdstat_"), v) for k, v in stats.items() if k != "cmdstat_evalsha"),
            key=lambda kv: -kv[1]["usec"],
        )
        print(
            "     inside the scripts, µs of Redis CPU per job: "
            + ", ".join(f"{k} {v['usec'] / n:.1f} ({v['calls'] / n:.2f}/job)" for k, v in inner)
        )
        if spy is not None:
            spy.wait(30)
            print_spy(raw)
    clean_db(r)


def _func(frame: str) -> str:
    """``name (path/file.py:line)`` -> ``name (file.py)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1].split(':')[0]})" if where else name


def print_spy(raw: Path) -> None:
    """Own and inclusive time per function from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        k = int(count)
        total += k
        frames = [_func(f) for f in stack.split(";")[1:]]  # [0] is the thread
        if frames:
            own[frames[-1]] += k
        for f in set(frames):
            incl[f] += k
    print(f"   py-spy --gil (samples of the thread holding the GIL: {total}):")
    print("     own time:")
    for frame, k in own.most_common(16):
        print(f"       {k / total * 100:5.1f}%  {frame}")
    print("     inclusive time:")
    for frame, k in incl.most_common(26):
        print(f"       {k / total * 100:5.1f}%  {frame}")


WRAPPER = r"""
import json, os, signal, sys, threading, time
from sleipnir.brokers.redis import RedisBroker, RedisResultStore
from sleipnir.worker import Worker
import prof_tasks

ev = []
now = lambda: time.clock_gettime_ns(time.CLOCK_MONOTONIC)

def wrap(cls, name, ids=None):
    orig = getattr(cls, name)
    def f(self, *a, **k):
        t0 = now()
        out = orig(self, *a, **k)
        t1 = now()
        ev.append((name, t0, t1, ids(a, out) if ids else []))
        return out
    setattr(cls, name, f)

wrap(RedisBroker, "wait")
wrap(RedisBroker, "reserve", lambda a, out: [r.id for r in out])
wrap(RedisBroker, "ack", lambda a, out: [r.id for r in a[0]])
wrap(RedisResultStore, "put", lambda a, out: [r.job_id for r in a[0]])
orig_run = Worker._run_sync
def run_sync(self, held, task, job):
    ev.append(("run", now(), now(), [held.reservation.id]))
    return orig_run(self, held, task, job)
Worker._run_sync = run_sync
w = Worker(prof_tasks.app, concurrency=8)
def stop(*_):
    w.stop()
signal.signal(signal.SIGTERM, lambda *_: w.stop())
threading.Thread(target=lambda: (sys.stdin.read(), w.stop()), daemon=True).start()
w.run()
json.dump(ev, open(sys.argv[1], "w"))
"""


def round_trip_profile(address: str, workdir: Path, n: int) -> None:
    os.environ["BENCH_REDIS"] = address
    import prof_tasks

    host, port = address.split(":")
    r = redis.Redis(host=host, port=int(port), db=DB)
    clean_db(r)
    (workdir / "wrapper.py").write_text(WRAPPER)
    out = workdir / "events.json"
    env = dict(child_env(), BENCH_REDIS=address, PYTHONPATH=str(workdir))
    worker = subprocess.Popen(
        [sys.executable, str(workdir / "wrapper.py"), str(out)],
        cwd=workdir,
        env=env,
        stdin=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    results = prof_tasks.app.results
    now = lambda: time.clock_gettime_ns(time.CLOCK_MONOTONIC)  # noqa: E731
    mine: dict[str, tuple[int, int, int]] = {}
    polls = []
    for i in range(n + 20):
        t0 = now()
        h = prof_tasks.noop.delay(i)
        t1 = now()
        k = 0
        while True:
            k += 1
            rec = results.get(h.id)
            if rec is not None and rec.state.finished:
                break
        if i >= 20:
            mine[h.id] = (t0, t1, now())
            polls.append(k)
        time.sleep(0.002)  # let the worker go idle (back to its blocking wait)
    assert worker.stdin is not None
    worker.stdin.close()
    worker.wait(30)
    events = json.loads(out.read_text())
    by_id: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
    waits = sorted((e[1], e[2]) for e in events if e[0] == "wait")
    for name, t0, t1, ids in events:
        for job_id in ids:
            if job_id in mine and name not in by_id[job_id]:
                by_id[job_id][name] = (t0, t1)
    phases: dict[str, list[int]] = defaultdict(list)
    for job_id, (e0, e1, seen) in mine.items():
        p = by_id[job_id]
        if not {"reserve", "run", "put", "ack"} <= p.keys():
            continue
        woke = max((w1 for w0, w1 in waits if w1 <= p["reserve"][0]), default=None)
        phases["enqueue: delay() call"].append(e1 - e0)
        if woke is not None and woke >= e1:
            phases["worker wakes (BLPOP on wake list returns) after enqueue returned"].append(
                woke - e1
            )
            phases["  wake -> reserve call starts (wait() pipeline done)"].append(
                p["reserve"][0] - woke
            )
        phases["reserve.lua round trip"].append(p["reserve"][1] - p["reserve"][0])
        phases["reserve returned -> task starts on a pool thread"].append(
            p["run"][0] - p["reserve"][1]
        )
        phases["task starts -> result put starts (collect, settle check)"].append(
            p["put"][0] - p["run"][0]
        )
        phases["result_put.lua round trip"].append(p["put"][1] - p["put"][0])
        phases["settle.lua (ack) round trip"].append(p["ack"][1] - p["ack"][0])
        phases["put done -> producer sees the result"].append(seen - p["put"][1])
        phases["TOTAL enqueue start -> result seen"].append(seen - e0)
    print(
        f"\n3. idle round trip, {len(phases['TOTAL enqueue start -> result seen'])} jobs, medians"
    )
    for name, vals in phases.items():
        print(f"   {name:<66} {med_us(vals):8.1f} µs")
    print(f"   producer result polls per job (HGETALL): median {statistics.median(polls):.0f}")
    reserves = [e for e in events if e[0] == "reserve"]
    empty = sum(1 for e in reserves if not e[3])
    print(
        f"   worker calls per job: {len(reserves) / len(mine):.1f} reserve ({empty} of "
        f"{len(reserves)} empty), {sum(1 for e in events if e[0] == 'wait') / len(mine):.1f} wait"
    )
    clean_db(r)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--py-spy", action="store_true", help="sample the drain with py-spy")
    parser.add_argument("--jobs", type=int, default=50_000, help="drain size (default 50,000)")
    parser.add_argument("--round-trips", type=int, default=300)
    parser.add_argument("--redis", default="127.0.0.1:6379", help="host:port of the Redis")
    parser.add_argument("--skip", default="", help="comma-separated: enqueue,drain,round_trip")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} at start")
    address = args.redis
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "prof_tasks.py").write_text(TASKS)
        sys.path.insert(0, str(workdir))
        os.environ["BENCH_REDIS"] = address
        skip = set(args.skip.split(","))
        if "enqueue" not in skip:
            enqueue_profile(address)
        if "drain" not in skip:
            drain_profile(address, workdir, args.jobs, args.py_spy)
        if "round_trip" not in skip:
            round_trip_profile(address, workdir, args.round_trips)
    print(f"\nload average {os.getloadavg()[0]:.2f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
