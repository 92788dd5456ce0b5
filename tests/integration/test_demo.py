"""`make demo` at a small scale: the photo demo runs end to end and loses nothing.

It starts the supervisor with two worker processes, the dashboard and the producer
web app, uploads 40 generated images and two report requests over HTTP, kills a
worker with SIGKILL halfway, and checks every accepted job through its status URL
and its output files. The test reads the summary it writes (``--json``) and checks
that the demo left no process behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import shared_redis_url

pytestmark = pytest.mark.integration

RUN = Path(__file__).resolve().parents[2] / "examples" / "photo_demo" / "run.py"
IMAGES = 40
REPORTS = 2


def run_demo(tmp_path: Path, broker: str | None) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLEIPNIR_")}
    if broker:
        env["SLEIPNIR_BROKER"] = broker
    out = tmp_path / "summary.json"
    argv = [sys.executable, str(RUN), "--images", str(IMAGES), "--reports", str(REPORTS)]
    argv += ["--report-seconds", "0.5", "--json", str(out)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    summary: dict[str, object] = json.loads(out.read_text())
    return summary


def check(summary: dict[str, object], text: str = "") -> None:
    assert summary["ok"] is True
    assert summary["accepted"] == IMAGES + REPORTS
    assert summary["accepted_uploads"] == IMAGES
    assert summary["refused"] == 0
    assert summary["succeeded"] == IMAGES + REPORTS
    assert summary["lost"] == 0
    assert summary["missing_files"] == []
    assert summary["output_images"] == 3 * IMAGES  # three sizes of each upload
    assert isinstance(summary["restarts"], int) and summary["restarts"] >= 1
    killed, restarted = summary["killed"], summary["restarted"]
    assert isinstance(killed, dict) and isinstance(restarted, dict)
    assert killed["name"] == restarted["name"]
    assert killed["pid"] != restarted["pid"]
    # Nothing the demo started survives it: supervisor, workers, dashboard, producer.
    pids = summary["pids"]
    assert isinstance(pids, dict) and {"supervisor", "dashboard", "producer"} <= set(pids)
    assert restarted["pid"] in pids.values()
    for name, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists() or _zombie(pid), f"{name} (pid {pid}) runs"
    # The temporary directory is removed after a run that went well.
    assert not Path(str(summary["output"])).exists()


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (OSError, IndexError):
        return True


def test_demo_on_sqlite(tmp_path: Path) -> None:
    check(run_demo(tmp_path, None))


def test_demo_on_redis(tmp_path: Path) -> None:
    with shared_redis_url() as url:
        check(run_demo(tmp_path, url))
