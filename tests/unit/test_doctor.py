"""``sleipnir doctor``'s checks, fed facts; its gatherers, fed files shaped like /proc."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from sleipnir import App
from sleipnir.doctor import (
    SYSCTLS,
    Check,
    CpuTimes,
    KernelFacts,
    RabbitFacts,
    RedisFacts,
    SQLiteFacts,
    Status,
    TimingFacts,
    check_kernel,
    check_lease,
    check_rabbitmq,
    check_redis,
    check_sqlite,
    check_steal,
    check_stop,
    check_tasks,
    failed,
    filesystem_type,
    read_cpu_times,
    read_redis,
    read_sqlite,
    read_sysctls,
    render_json,
    render_text,
    run_doctor,
    steal_percent,
    task_facts,
)

GOOD_SYSCTL = {
    "fs.file-max": 2_000_000,
    "net.core.somaxconn": 4096,
    "net.ipv4.tcp_tw_reuse": 1,
    "net.ipv4.tcp_fin_timeout": 15,
}


def by_name(checks: list[Check], name: str) -> Check:
    found = [c for c in checks if c.name == name]
    assert len(found) == 1, (name, checks)
    return found[0]


# -- kernel -----------------------------------------------------------------------


def test_recommended_kernel_settings_pass() -> None:
    checks = check_kernel(KernelFacts(GOOD_SYSCTL, 65536, 65536))
    assert [c.status for c in checks] == [Status.PASS] * 5
    assert not failed(checks)


def test_distribution_defaults_warn_with_the_sysctl_line_to_add() -> None:
    facts = KernelFacts(
        {
            "fs.file-max": 65536,
            "net.core.somaxconn": 128,
            "net.ipv4.tcp_tw_reuse": 2,
            "net.ipv4.tcp_fin_timeout": 60,
        },
        1024,
        4096,
    )
    checks = check_kernel(facts)
    assert all(c.status is Status.WARN for c in checks)
    assert by_name(checks, "net.core.somaxconn").fix == (
        "echo 'net.core.somaxconn = 4096' >> /etc/sysctl.d/90-sleipnir.conf && sysctl --system"
    )
    assert "loopback only" in by_name(checks, "net.ipv4.tcp_tw_reuse").detail
    assert "60, recommended <= 15" in by_name(checks, "net.ipv4.tcp_fin_timeout").detail
    files = by_name(checks, "open files")
    assert "limit 1024 (hard 4096)" in files.detail
    assert files.fix is not None and "LimitNOFILE=65536" in files.fix
    # The hard limit is below the recommendation: ulimit alone cannot reach it.
    assert "limits.conf" in files.fix and "ulimit" not in files.fix
    # Kernel tuning is advice: it never makes doctor fail.
    assert not failed(checks)


def test_an_unreadable_sysctl_warns() -> None:
    checks = check_kernel(KernelFacts({**GOOD_SYSCTL, "fs.file-max": None}, 70000, 70000))
    assert by_name(checks, "fs.file-max").status is Status.WARN
    assert "could not be read" in by_name(checks, "fs.file-max").detail


def test_sysctls_are_read_from_a_proc_sys_tree(tmp_path: Path) -> None:
    values = {"fs.file-max": "9223372036854775807", "net.core.somaxconn": "511\n"}
    for name, text in values.items():
        f = tmp_path / name.replace(".", "/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
    (tmp_path / "net/ipv4").mkdir(parents=True)
    (tmp_path / "net/ipv4/tcp_tw_reuse").write_text("garbage\n")
    got = read_sysctls(tmp_path)
    assert got == {
        "fs.file-max": 9223372036854775807,
        "net.core.somaxconn": 511,
        "net.ipv4.tcp_tw_reuse": None,
        "net.ipv4.tcp_fin_timeout": None,
    }
    assert set(got) == {s.name for s in SYSCTLS}


# -- steal ----------------------------------------------------------------------------


def test_steal_percent_is_the_share_of_all_cpu_time() -> None:
    assert steal_percent(CpuTimes(1000, 10), CpuTimes(1400, 30)) == pytest.approx(5.0)
    assert steal_percent(CpuTimes(1000, 10), CpuTimes(1000, 10)) is None


@pytest.mark.parametrize(
    ("percent", "status"),
    [(0.0, Status.PASS), (0.2, Status.WARN), (9.9, Status.WARN), (10.0, Status.FAIL)],
)
def test_steal_above_zero_warns_and_from_ten_percent_fails(percent: float, status: Status) -> None:
    check = check_steal(percent, 3.0)
    assert check.status is status
    if status is not Status.PASS:
        assert check.fix is not None and "not oversold" in check.fix


def test_steal_not_sampled_is_skipped() -> None:
    assert check_steal(None, 0).status is Status.SKIP


def test_cpu_times_come_from_the_cpu_line(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 50 800 20 0 5 20 7 0\ncpu0 50 2 25 400 10 0 2 10 3 0\nintr 1 2 3\n")
    # guest (7) is counted in user already, so it is not added again.
    assert read_cpu_times(stat) == CpuTimes(total=1000, steal=20)
    assert read_cpu_times(tmp_path / "missing") is None


# -- Redis ------------------------------------------------------------------------------


def redis(**kw: object) -> RedisFacts:
    base: dict[str, object] = {
        "appendonly": "yes",
        "appendfsync": "always",
        "maxmemory_policy": "noeviction",
        "maxmemory": 2 * 2**30,
    }
    base.update(kw)
    return RedisFacts(**base)  # type: ignore[arg-type]


def test_a_redis_kept_like_a_database_passes() -> None:
    checks = check_redis(redis())
    assert {c.name: c.status for c in checks} == {
        "redis appendonly": Status.PASS,
        "redis appendfsync": Status.PASS,
        "redis maxmemory-policy": Status.PASS,
        "redis maxmemory": Status.PASS,
    }
    assert "2.0 GiB" in by_name(checks, "redis maxmemory").detail


def test_appendonly_no_fails_and_appendfsync_is_then_not_in_effect() -> None:
    checks = check_redis(redis(appendonly="no", appendfsync="everysec"))
    aof = by_name(checks, "redis appendonly")
    assert aof.status is Status.FAIL
    assert aof.fix is not None and aof.fix.startswith("`appendonly yes` in redis.conf")
    assert by_name(checks, "redis appendfsync").status is Status.SKIP


@pytest.mark.parametrize(("fsync", "loss"), [("everysec", "last second"), ("no", "30 s")])
def test_appendfsync_short_of_always_warns_of_a_host_crash(fsync: str, loss: str) -> None:
    check = by_name(check_redis(redis(appendfsync=fsync)), "redis appendfsync")
    assert check.status is Status.WARN
    assert loss in check.detail


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-lfu", "allkeys-random"])
def test_allkeys_policies_fail_they_evict_jobs_and_leases(policy: str) -> None:
    check = by_name(check_redis(redis(maxmemory_policy=policy)), "redis maxmemory-policy")
    assert check.status is Status.FAIL
    assert "sleipnir:job:<id>" in check.detail and "sleipnir:lease:<q>" in check.detail
    assert check.fix is not None and "`maxmemory-policy noeviction`" in check.fix


@pytest.mark.parametrize("policy", ["volatile-lru", "volatile-lfu", "volatile-ttl"])
def test_volatile_policies_fail_for_the_results_they_evict_not_for_jobs(policy: str) -> None:
    check = by_name(check_redis(redis(maxmemory_policy=policy)), "redis maxmemory-policy")
    assert check.status is Status.FAIL
    assert "only the stored results (sleipnir:result:<id>)" in check.detail
    assert "jobs, queues and leases carry none" in check.detail


def test_volatile_policy_only_warns_when_results_live_elsewhere() -> None:
    facts = redis(maxmemory_policy="volatile-lru", results_here=False)
    check = by_name(check_redis(facts), "redis maxmemory-policy")
    assert check.status is Status.WARN
    assert "results are stored elsewhere" in check.detail


def test_an_evicting_policy_without_maxmemory_is_not_in_effect_yet() -> None:
    checks = check_redis(redis(maxmemory_policy="allkeys-lru", maxmemory=0))
    policy = by_name(checks, "redis maxmemory-policy")
    assert policy.status is Status.WARN
    assert "Not in effect while maxmemory is 0" in policy.detail
    assert by_name(checks, "redis maxmemory").status is Status.WARN


def test_config_get_refused_warns_that_appendfsync_could_not_be_checked() -> None:
    report = {
        "appendonly": "yes",
        "appendfsync": None,
        "maxmemory": "1073741824",
        "maxmemory-policy": "noeviction",
        "role": "master",
        "config-error": "unknown command 'CONFIG'",
    }
    checks = check_redis(read_redis(report, results_here=True))
    fsync = by_name(checks, "redis appendfsync")
    assert fsync.status is Status.WARN
    assert "could not be checked" in fsync.detail and "unknown command 'CONFIG'" in fsync.detail
    assert by_name(checks, "redis appendonly").status is Status.PASS
    assert by_name(checks, "redis maxmemory").status is Status.PASS


def test_a_replica_fails() -> None:
    check = by_name(check_redis(redis(role="slave")), "redis role")
    assert check.status is Status.FAIL
    assert "READONLY" in check.detail


# -- SQLite --------------------------------------------------------------------------------


def sqlite_facts(**kw: object) -> SQLiteFacts:
    base: dict[str, object] = {
        "path": Path("/var/lib/app/jobs.db"),
        "exists": True,
        "journal_mode": "wal",
        "synchronous": "FULL",
        "free_bytes": 50 * 2**30,
        "fs_type": "ext4",
    }
    base.update(kw)
    return SQLiteFacts(**base)  # type: ignore[arg-type]


def test_a_wal_file_with_full_sync_on_a_local_disk_passes() -> None:
    checks = check_sqlite(sqlite_facts())
    assert all(c.status is Status.PASS for c in checks), checks


def test_sync_normal_warns_of_power_loss() -> None:
    check = by_name(check_sqlite(sqlite_facts(synchronous="NORMAL")), "sqlite synchronous")
    assert check.status is Status.WARN
    assert check.fix is not None and "?sync=full" in check.fix


@pytest.mark.parametrize(
    ("fs", "status"),
    [("tmpfs", Status.FAIL), ("nfs4", Status.FAIL), ("fuse.sshfs", Status.FAIL),
     ("overlay", Status.WARN), ("xfs", Status.PASS), (None, Status.WARN)],
)  # fmt: skip
def test_the_filesystem_beneath_the_file(fs: str | None, status: Status) -> None:
    assert by_name(check_sqlite(sqlite_facts(fs_type=fs)), "sqlite filesystem").status is status


@pytest.mark.parametrize(
    ("free", "status"),
    [(100 * 2**20, Status.FAIL), (1 * 2**30, Status.WARN), (3 * 2**30, Status.PASS)],
)
def test_free_disk_beside_the_file(free: int, status: Status) -> None:
    assert by_name(check_sqlite(sqlite_facts(free_bytes=free)), "sqlite disk").status is status


def test_a_file_not_in_wal_or_not_there_warns() -> None:
    assert (
        by_name(check_sqlite(sqlite_facts(journal_mode="delete")), "sqlite journal").status
        is Status.WARN
    )
    missing = by_name(check_sqlite(sqlite_facts(exists=False)), "sqlite journal")
    assert missing.status is Status.WARN and "does not exist yet" in missing.detail


def test_read_sqlite_never_creates_the_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/sub/jobs.db?sync=full"
    facts = read_sqlite(url)
    assert not facts.exists and not (tmp_path / "sub").exists()
    assert facts.synchronous == "FULL"
    assert facts.free_bytes is not None and facts.free_bytes > 0


def test_read_sqlite_reads_the_journal_mode_of_a_file(tmp_path: Path) -> None:
    path = tmp_path / "plain.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (x)")
    assert read_sqlite(f"sqlite:///{path}").journal_mode == "delete"
    app = App(f"sqlite:///{path}")
    app.broker  # opening it switches the file to WAL  # noqa: B018
    app.close()
    facts = read_sqlite(f"sqlite:///{path}")
    assert facts.exists and facts.journal_mode == "wal" and facts.synchronous == "NORMAL"


def test_filesystem_type_takes_the_longest_mount_point(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/vda / ext4 rw 0 0\n"
        "tmpfs /tmp tmpfs rw 0 0\n"
        "server:/export /tmp/shared nfs4 rw 0 0\n"
        "tmpfs /tmpx tmpfs rw 0 0\n"
    )
    assert filesystem_type(Path("/var/lib"), mounts) == "ext4"
    assert filesystem_type(Path("/tmp"), mounts) == "tmpfs"
    assert filesystem_type(Path("/tmp/shared/q"), mounts) == "nfs4"
    assert filesystem_type(Path("/tmpdir"), mounts) == "ext4"  # a prefix of a name is not a mount
    assert filesystem_type(Path("/"), tmp_path / "none") is None


# -- timings -------------------------------------------------------------------------------


def timings(**kw: object) -> TimingFacts:
    base: dict[str, object] = {
        "lease_s": 30.0,
        "renew_every_s": 10.0,
        "worker_stop_timeout_s": 30.0,
        "supervisor_stop_timeout_s": 45.0,
        "task_timeouts": {"resize": 5.0, "report": 25.0},
    }
    base.update(kw)
    return TimingFacts(**base)  # type: ignore[arg-type]


def test_timings_that_fit_pass() -> None:
    checks = [check_lease(timings()), *check_stop(timings())]
    assert [c.status for c in checks] == [Status.PASS] * 3
    assert "'report', 25 s" in by_name(checks, "task timeouts").detail


def test_a_lease_renewed_after_it_ends_fails() -> None:
    assert check_lease(timings(lease_s=3.0, renew_every_s=3.0)).status is Status.FAIL


def test_a_short_lease_warns_and_so_does_a_very_long_one() -> None:
    short = check_lease(timings(lease_s=6.0, renew_every_s=2.0))
    assert short.status is Status.WARN and "stall longer than 4 s" in short.detail
    long = check_lease(timings(lease_s=3600.0, renew_every_s=1200.0))
    assert long.status is Status.WARN and "wait 3600 s" in long.detail


def test_a_task_longer_than_the_worker_stop_timeout_fails_with_both_fixes() -> None:
    checks = check_stop(timings(task_timeouts={"report": 600.0, "resize": 5.0}))
    check = by_name(checks, "task timeouts")
    assert check.status is Status.FAIL
    assert "'report' may run 600 s" in check.detail
    assert check.fix == (
        "`sleipnir worker --stop-timeout 600` and a supervisor stop timeout above it (615 s)"
    )


def test_a_supervisor_that_kills_before_the_worker_stopped_fails() -> None:
    check = by_name(check_stop(timings(supervisor_stop_timeout_s=30.0)), "stop timeout")
    assert check.status is Status.FAIL
    assert check.fix == "TimeoutStopSec=45 (systemd) or stopwaitsecs=45 (supervisord)"
    tight = by_name(check_stop(timings(supervisor_stop_timeout_s=35.0)), "stop timeout")
    assert tight.status is Status.WARN


def test_tasks_without_a_timeout_warn_and_missing_inputs_skip() -> None:
    checks = check_stop(timings(task_timeouts={"a": None, "b": 3.0}))
    statuses = sorted(c.status for c in checks if c.name == "task timeouts")
    assert statuses == [Status.PASS, Status.WARN]
    skipped = check_stop(timings(task_timeouts=None, supervisor_stop_timeout_s=None))
    assert [c.status for c in skipped] == [Status.SKIP, Status.SKIP]
    assert "--stop-timeout" in skipped[1].detail


# -- the whole run and its output ------------------------------------------------------------


def fake_proc(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "sys"
    for name, value in GOOD_SYSCTL.items():
        f = root / name.replace(".", "/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f"{value}\n")
    stat = tmp_path / "stat"
    stat.write_text("cpu  1000 0 500 8000 100 0 0 0 0 0\n")
    return root, stat


def test_run_doctor_samples_steal_across_its_window(tmp_path: Path) -> None:
    root, stat = fake_proc(tmp_path)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        # The window passes: 1000 more ticks, 50 of them stolen.
        slept.append(seconds)
        stat.write_text("cpu  1650 0 600 8200 100 0 0 50 0 0\n")

    app = App(f"sqlite:///{tmp_path}/jobs.db?sync=full", lease=30.0)

    @app.task(timeout=60.0)
    def report() -> None: ...

    checks = run_doctor(
        app,
        supervisor_stop_timeout_s=90.0,
        worker_stop_timeout_s=70.0,
        steal_seconds=2.0,
        proc_sys=root,
        proc_stat=stat,
        sleep=sleep,
        monotonic=lambda: 100.0,
    )
    assert slept == [2.0]
    steal = by_name(checks, "cpu steal")
    assert steal.status is Status.WARN and steal.detail.startswith("5.0% over 2 s")
    assert by_name(checks, "fs.file-max").status is Status.PASS
    assert by_name(checks, "sqlite synchronous").status is Status.PASS
    assert by_name(checks, "task timeouts").status is Status.PASS
    assert by_name(checks, "stop timeout").status is Status.PASS
    assert not (tmp_path / "jobs.db").exists()
    assert not failed(checks)


def test_the_memory_broker_fails() -> None:
    checks = run_doctor(App("memory://"), steal_seconds=0)
    assert by_name(checks, "broker").status is Status.FAIL
    assert failed(checks)


def test_text_report_wraps_and_puts_the_fix_under_its_check() -> None:
    checks = [
        Check("lease", Status.PASS, "fine"),
        Check("redis appendonly", Status.FAIL, "no: " + "lost " * 40, "`appendonly yes`"),
    ]
    text = render_text(checks, header="sleipnir doctor: redis://h/0", columns=80)
    lines = text.splitlines()
    assert lines[0] == "sleipnir doctor: redis://h/0"
    assert lines[1].startswith("PASS  lease ")
    assert lines[2].startswith("FAIL  redis appendonly  no: lost")
    assert all(len(line) <= 80 for line in lines)
    assert any(line.strip() == "fix: `appendonly yes`" for line in lines)
    assert lines[-1] == "1 passed, 0 warnings, 1 failed, 0 skipped"


def test_json_report() -> None:
    checks = [Check("lease", Status.PASS, "fine"), Check("x", Status.WARN, "hm", "do y")]
    doc = json.loads(render_json(checks, broker="sqlite:///a.db"))
    assert doc["ok"] is True and doc["broker"] == "sqlite:///a.db"
    assert doc["counts"] == {"pass": 1, "warn": 1, "fail": 0, "skip": 0}
    assert doc["checks"][1] == {"name": "x", "status": "warn", "detail": "hm", "fix": "do y"}


# -- RabbitMQ ---------------------------------------------------------------------------------


def rabbit(**kw: object) -> RabbitFacts:
    base: dict[str, object] = {
        "queue_type": "quorum",
        "park_after_s": 900.0,
        "consumer_timeout_s": 1800.0,
        "renew_every_s": 10.0,
        "longest_task_s": None,
        "queues": 2,
    }
    base.update(kw)
    return RabbitFacts(**base)  # type: ignore[arg-type]


def test_quorum_queues_parked_before_the_consumer_timeout_pass() -> None:
    checks = check_rabbitmq(rabbit())
    assert [c.status for c in checks] == [Status.PASS, Status.PASS]
    assert "2 queues" in checks[0].detail


def test_classic_queues_warn_and_a_refused_redeclare_fails() -> None:
    assert by_name(check_rabbitmq(rabbit(queue_type="classic")), "rabbitmq queues").status is (
        Status.WARN
    )
    refused = by_name(
        check_rabbitmq(rabbit(queues_error="queue 'p.q' exists with other arguments")),
        "rabbitmq queues",
    )
    assert refused.status is Status.FAIL and "exists with other arguments" in refused.detail


def test_a_job_held_past_the_consumer_timeout_fails() -> None:
    late = by_name(check_rabbitmq(rabbit(park_after_s=1800.0)), "rabbitmq consumer_timeout")
    assert late.status is Status.FAIL
    assert "a task without a timeout" in late.detail
    assert late.fix is not None and late.fix.startswith("?park_after=900 ")
    # Parking too late is harmless when no task runs that long.
    short = rabbit(park_after_s=1800.0, longest_task_s=600.0)
    assert by_name(check_rabbitmq(short), "rabbitmq consumer_timeout").status is Status.PASS
    long = rabbit(park_after_s=1800.0, longest_task_s=1795.0)
    assert by_name(check_rabbitmq(long), "rabbitmq consumer_timeout").status is Status.FAIL


# -- what the tasks need ---------------------------------------------------------------------


def test_limits_on_rabbitmq_with_a_local_result_store_warn_they_hold_per_host(
    tmp_path: Path,
) -> None:
    app = App(broker="amqp://guest:guest@127.0.0.1:5672/%2F", results=f"sqlite://{tmp_path}/r.db")

    @app.task(rate_limit="100/m", unique_for=60.0)
    def call_api() -> None: ...

    @app.periodic(every=60.0)
    def sweep() -> None: ...

    @app.task
    def plain() -> None: ...

    check = by_name(check_tasks(task_facts(app)), "shared state")
    assert check.status is Status.WARN
    assert "call_api (rate_limit, unique_for), sweep (schedule)" in check.detail
    assert "plain" not in check.detail
    assert "results=" in check.fix


@pytest.mark.parametrize(
    ("broker", "results"),
    [("redis://127.0.0.1:6379/0", None), ("sqlite:///x.db", None),
     ("amqp://127.0.0.1/%2F", "redis://127.0.0.1:6379/0")],
)  # fmt: skip
def test_a_shared_or_single_host_result_store_passes(broker: str, results: str | None) -> None:
    app = App(broker=broker, results=results)

    @app.task(concurrency=2)
    def work() -> None: ...

    assert by_name(check_tasks(task_facts(app)), "shared state").status is Status.PASS


def test_sync_time_limits_without_a_ctx_warn_and_name_the_tasks() -> None:
    from sleipnir import Context

    app = App(broker="memory://")

    @app.task(timeout=5.0)
    def blind() -> None: ...

    @app.task(timeout=5.0)
    def polite(ctx: Context) -> None: ...

    @app.task(timeout=5.0)
    async def cancellable() -> None: ...

    @app.task(timeout=5.0, isolate=True)
    def killable() -> None: ...

    check = by_name(check_tasks(task_facts(app)), "time limits")
    assert check.status is Status.WARN
    assert "blind" in check.detail
    for told in ("polite", "cancellable", "killable"):
        assert told not in check.detail
    del polite, cancellable, killable
    app.tasks.pop("blind")
    assert [c.name for c in check_tasks(task_facts(app))] == ["shared state"]
