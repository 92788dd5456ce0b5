"""``sleipnir doctor`` against real settings: private Redis servers, SQLite files, this host.

Each Redis test starts its own ``redis-server`` on a free loopback port with the
configuration under test (``redis_servers``), so nothing here reads or changes
the shared server.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sleipnir import App
from sleipnir.doctor import Check, Status, read_sysctls, run_doctor

from ..conftest import require_server
from .conftest import SLEIPNIR, RedisServer, free_port

pytestmark = pytest.mark.integration

StartRedis = Callable[..., RedisServer]


def doctor(
    *args: str,
    cwd: Path,
    broker: str | None = None,
    preexec: Callable[[], Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Run ``sleipnir doctor --json`` and return its exit status and report."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLEIPNIR_")}
    if broker is not None:
        env["SLEIPNIR_BROKER"] = broker
    proc = subprocess.run(
        [str(SLEIPNIR), "doctor", "--json", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=preexec,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def check(report: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in report["checks"] if c["name"] == name]
    assert len(found) == 1, (name, report)
    result: dict[str, Any] = found[0]
    return result


def named(checks: list[Check], name: str) -> Check:
    found = [c for c in checks if c.name == name]
    assert len(found) == 1, (name, checks)
    return found[0]


def redis_checks(url: str) -> list[Check]:
    app = App(url)
    try:
        return run_doctor(app, steal_seconds=0)
    finally:
        app.close()


# -- Redis -------------------------------------------------------------------------------


def test_a_redis_configured_like_a_cache_fails_with_the_fixes(
    redis_servers: StartRedis, tmp_path: Path
) -> None:
    server = redis_servers(
        "--appendonly", "no", "--maxmemory", "64mb", "--maxmemory-policy", "volatile-lru"
    )
    code, report = doctor("--steal-seconds", "0", cwd=tmp_path, broker=server.url())
    assert code == 1 and report["ok"] is False
    aof = check(report, "redis appendonly")
    assert aof["status"] == "fail"
    assert aof["fix"].startswith("`appendonly yes` in redis.conf")
    policy = check(report, "redis maxmemory-policy")
    assert policy["status"] == "fail"
    assert policy["detail"].startswith("volatile-lru:")
    assert "only the stored results" in policy["detail"]
    assert "`maxmemory-policy noeviction`" in policy["fix"]
    assert check(report, "redis maxmemory")["status"] == "pass"


def test_a_redis_configured_for_a_queue_passes(redis_servers: StartRedis, tmp_path: Path) -> None:
    server = redis_servers("--maxmemory", "64mb", "--maxmemory-policy", "noeviction")
    code, report = doctor("--steal-seconds", "0", cwd=tmp_path, broker=server.url())
    redis_lines = [c for c in report["checks"] if c["name"].startswith("redis ")]
    assert [(c["name"], c["status"]) for c in redis_lines] == [
        ("redis appendonly", "pass"),
        ("redis appendfsync", "pass"),
        ("redis maxmemory-policy", "pass"),
        ("redis maxmemory", "pass"),
    ]
    assert code == 0, report
    assert report["counts"]["fail"] == 0


def test_allkeys_eviction_and_a_live_config_set_are_seen(redis_servers: StartRedis) -> None:
    server = redis_servers("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")
    checks = redis_checks(server.url())
    policy = named(checks, "redis maxmemory-policy")
    assert policy.status is Status.FAIL and "sleipnir:job:<id>" in policy.detail
    client = server.client()
    try:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("appendfsync", "everysec")
    finally:
        client.close()
    checks = redis_checks(server.url())
    assert named(checks, "redis maxmemory-policy").status is Status.PASS
    fsync = named(checks, "redis appendfsync")
    assert fsync.status is Status.WARN and "about the last second" in fsync.detail


def test_a_managed_redis_without_config_get_warns_what_it_could_not_check(
    redis_servers: StartRedis,
) -> None:
    server = redis_servers("--rename-command", "CONFIG", "", "--maxmemory", "64mb")
    checks = redis_checks(server.url())
    fsync = named(checks, "redis appendfsync")
    assert fsync.status is Status.WARN
    assert fsync.detail.startswith("could not be checked: CONFIG GET is refused")
    # INFO still tells the rest.
    assert named(checks, "redis appendonly").status is Status.PASS
    assert named(checks, "redis maxmemory-policy").status is Status.PASS
    assert named(checks, "redis maxmemory").status is Status.PASS


def test_a_replica_fails(redis_servers: StartRedis) -> None:
    primary = redis_servers()
    replica = redis_servers("--replicaof", "127.0.0.1", str(primary.port))
    check = named(redis_checks(replica.url()), "redis role")
    assert check.status is Status.FAIL and "READONLY" in check.detail


def test_an_unreachable_redis_fails(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0?socket_connect_timeout=0.2"
    code, report = doctor("--steal-seconds", "0", cwd=tmp_path, broker=url)
    assert code == 1
    broker = check(report, "broker")
    assert broker["status"] == "fail" and "unreachable" in broker["detail"]


# -- SQLite and timings, with an app ---------------------------------------------------------

APP_MODULE = """
from sleipnir import App

app = App("sqlite://{db}?sync={sync}")

@app.task(timeout=5.0)
def resize(path: str) -> str:
    return path

@app.task(timeout=120.0)
def monthly_report(month: str) -> str:
    return month
"""


def write_app(tmp_path: Path, sync: str) -> Path:
    db = tmp_path / "jobs.db"
    (tmp_path / "doctor_app.py").write_text(textwrap.dedent(APP_MODULE).format(db=db, sync=sync))
    return db


def test_sqlite_app_whose_timings_fit_passes(tmp_path: Path) -> None:
    db = write_app(tmp_path, "full")
    app = App(f"sqlite://{db}")
    app.broker  # a worker or producer opens the file: WAL from then on  # noqa: B018
    app.close()
    code, report = doctor(
        "doctor_app:app",
        "--steal-seconds", "0",
        "--worker-stop-timeout", "120",
        "--stop-timeout", "135",
        cwd=tmp_path,
    )  # fmt: skip
    assert check(report, "sqlite journal")["status"] == "pass"
    assert check(report, "sqlite synchronous")["status"] == "pass"
    assert check(report, "sqlite disk")["status"] in ("pass", "warn")
    assert check(report, "task timeouts")["detail"].startswith("longest: 'monthly_report', 120 s")
    assert check(report, "stop timeout")["status"] == "pass"
    assert check(report, "lease")["status"] == "pass"
    assert code == (1 if report["counts"]["fail"] else 0)
    fs = check(report, "sqlite filesystem")["status"]
    if fs != "fail":  # tmp_path on tmpfs fails, rightly, on some machines
        assert code == 0, report


def test_sqlite_app_whose_stop_cuts_its_jobs_fails(tmp_path: Path) -> None:
    db = write_app(tmp_path, "normal")
    code, report = doctor(
        "doctor_app:app", "--steal-seconds", "0", "--stop-timeout", "25", cwd=tmp_path
    )
    assert code == 1
    tasks = check(report, "task timeouts")
    assert tasks["status"] == "fail"
    assert "'monthly_report' may run 120 s" in tasks["detail"]
    stop = check(report, "stop timeout")
    assert stop["status"] == "fail"
    assert stop["fix"] == "TimeoutStopSec=45 (systemd) or stopwaitsecs=45 (supervisord)"
    assert check(report, "sqlite synchronous")["status"] == "warn"
    journal = check(report, "sqlite journal")
    assert journal["status"] == "warn" and "does not exist yet" in journal["detail"]
    assert not db.exists(), "doctor must not create the database"


def test_the_text_report_names_the_broker_and_exits_with_the_verdict(tmp_path: Path) -> None:
    write_app(tmp_path, "full")
    proc = subprocess.run(
        [str(SLEIPNIR), "doctor", "doctor_app", "--steal-seconds", "0", "--stop-timeout", "5"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"sleipnir doctor: sqlite://{tmp_path / 'jobs.db'}?sync=full"
    assert any(line.startswith("FAIL  stop timeout ") for line in lines)
    assert any("fix: TimeoutStopSec=45" in line for line in lines)
    assert re.fullmatch(r"\d+ passed, \d+ warnings, [1-9]\d* failed, \d+ skipped", lines[-1])


# -- this host -----------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("sysctl") is None, reason="no sysctl binary to compare with")
def test_kernel_settings_are_those_sysctl_reports() -> None:
    got = read_sysctls()
    for name, value in got.items():
        proc = subprocess.run(
            ["sysctl", "-n", name], capture_output=True, text=True, timeout=10, check=False
        )
        if proc.returncode == 0:
            assert value == int(proc.stdout.split()[0]), name
        else:
            assert value is None, name


def test_a_low_open_files_limit_warns(tmp_path: Path) -> None:
    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (512, 4096))

    write_app(tmp_path, "full")
    _, report = doctor("--steal-seconds", "0", cwd=tmp_path, preexec=lower)
    files = check(report, "open files")
    assert files["status"] == "warn"
    assert files["detail"].startswith("limit 512 (hard 4096)")


def test_cpu_steal_is_sampled_from_proc_stat(tmp_path: Path) -> None:
    if not Path("/proc/stat").exists():
        pytest.skip("no /proc/stat")
    _, report = doctor("--steal-seconds", "0.3", cwd=tmp_path, broker="sqlite://jobs.db")
    steal = check(report, "cpu steal")
    assert steal["status"] in ("pass", "warn", "fail")
    percent = float(steal["detail"].split("%")[0])
    assert 0.0 <= percent <= 100.0
    assert " over 0.3 s " in steal["detail"]


# -- RabbitMQ ------------------------------------------------------------------------------

AMQP_HOST, AMQP_PORT = "127.0.0.1", 5672


@pytest.fixture
def amqp_prefix() -> Iterator[str]:
    """A fresh queue prefix; every queue doctor or the test declared under it is deleted."""
    require_server("RabbitMQ", AMQP_HOST, AMQP_PORT)
    pika = pytest.importorskip("pika")
    from sleipnir.brokers.amqp_link import Names

    prefix = f"sleipnir-doctor-{uuid.uuid4().hex[:12]}"
    yield prefix
    names = Names(prefix)
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url()))
    try:
        ch = conn.channel()
        for name in [*names.all_of("default"), names.registry]:
            ch.queue_delete(name)
    finally:
        conn.close()


def amqp_url(prefix: str | None = None, query: str = "") -> str:
    """Sleipnir's URL under ``prefix``; without one, the plain URL pika takes."""
    plain = f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/%2F"
    return plain if prefix is None else f"{plain}?prefix={prefix}{query}"


def test_rabbitmq_quorum_queues_with_jobs_pass(amqp_prefix: str, tmp_path: Path) -> None:
    app = App(amqp_url(amqp_prefix, "&queue_type=quorum"), results=f"sqlite://{tmp_path}/r.db")

    @app.task(timeout=60.0)
    def noop() -> None: ...

    try:
        noop.delay()  # declares the queue's topology and registers it
        checks = run_doctor(app, steal_seconds=0)
    finally:
        app.close()
    queues = named(checks, "rabbitmq queues")
    assert queues.status is Status.PASS and "(1 queues with jobs so far)" in queues.detail
    assert named(checks, "rabbitmq consumer_timeout").status is Status.PASS


def test_rabbitmq_late_parking_and_a_non_durable_queue_fail(
    amqp_prefix: str, tmp_path: Path
) -> None:
    import pika

    from sleipnir.brokers.amqp_link import Names

    names = Names(amqp_prefix)
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url()))
    try:
        ch = conn.channel()
        ch.queue_declare(names.work("default"), durable=False)  # declared by another tool
        ch.queue_declare(names.registry, durable=True)
        ch.basic_publish("", names.registry, b"default")
    finally:
        conn.close()
    code, report = doctor(
        "--steal-seconds", "0",
        cwd=tmp_path,
        broker=amqp_url(amqp_prefix, "&park_after=2000"),
    )  # fmt: skip
    assert code == 1
    queues = check(report, "rabbitmq queues")
    assert queues["status"] == "fail" and "exists with other arguments" in queues["detail"]
    timeout = check(report, "rabbitmq consumer_timeout")
    assert timeout["status"] == "fail" and "park_after 2000 s comes too late" in timeout["detail"]
    assert timeout["fix"].startswith("?park_after=900 ")
