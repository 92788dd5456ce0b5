"""One measurement in a fresh process: ``python child.py SYSTEM PHASE JSON_KWARGS``.

PHASE is a function of ``peer_SYSTEM`` (single, bulk, fill, round_trip, ...), or,
for SYSTEM ``floor``, one of the raw redis-py measurements below. The result is
printed as one JSON line on stdout.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from typing import Any

from common import FLOOR_PREFIX, redis_url, time_calls


def floor(n: int, warmup: int, pipelines: int, per_pipeline: int) -> dict[str, Any]:
    import redis

    r = redis.Redis.from_url(redis_url("floor"))
    out: dict[str, Any] = {
        "redis_py": redis.__version__,
        "hiredis": bool(getattr(redis.utils, "HIREDIS_AVAILABLE", False)),
    }
    out["ping"] = time_calls(lambda i: r.ping(), n, warmup)
    out["ping_raw"] = time_calls(lambda i: r.execute_command("PING"), n, warmup)
    out["lpush"] = time_calls(lambda i: r.lpush(f"{FLOOR_PREFIX}:single", b"x" * 100), n, warmup)
    sha = r.script_load("return 1")
    out["evalsha"] = time_calls(lambda i: r.evalsha(sha, 0), n, warmup)
    payload = b"x" * 100
    pipe_once = r.pipeline(transaction=False)
    for _ in range(per_pipeline):
        pipe_once.lpush(f"{FLOOR_PREFIX}:pipe", payload)
    pipe_once.execute()  # warm-up
    began = time.perf_counter()
    for _ in range(pipelines):
        pipe = r.pipeline(transaction=False)
        for _ in range(per_pipeline):
            pipe.lpush(f"{FLOOR_PREFIX}:pipe", payload)
        pipe.execute()
    wall = time.perf_counter() - began
    out["lpush_pipelined"] = {
        "items": pipelines * per_pipeline,
        "per_pipeline": per_pipeline,
        "items_per_s": pipelines * per_pipeline / wall,
    }
    r.delete(f"{FLOOR_PREFIX}:single", f"{FLOOR_PREFIX}:pipe")
    r.close()
    return out


def main() -> int:
    system, phase, kwargs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    if system == "floor":
        result = floor(**kwargs)
    else:
        module = importlib.import_module(f"peer_{system}")
        result = getattr(module, phase)(**kwargs)
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
