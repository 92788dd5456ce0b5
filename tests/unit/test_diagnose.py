"""Backends diagnose themselves: one set of rules for the doctor and the worker's start.

Also the one registry of URL schemes, and its error for a scheme it does not know.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import pytest

from sleipnir import App, ConfigurationError
from sleipnir.brokers import BACKENDS, backend_for, broker_from_url, results_from_url
from sleipnir.brokers.base import Broker
from sleipnir.brokers.memory import MemoryBroker
from sleipnir.brokers.postgres_checks import judge
from sleipnir.brokers.redis_checks import RedisFacts, check_redis, diagnose
from sleipnir.checks import Check, Deployment, Status, durability_warnings
from sleipnir.testing import FakeClock


class _Settings:
    """Stands in for a Redis broker: only its settings_report is read."""

    def __init__(self, settings: Mapping[str, str | None]) -> None:
        self.settings = dict(settings)

    def settings_report(self) -> dict[str, str | None]:
        return self.settings


SAFE = {
    "appendonly": "yes",
    "appendfsync": "always",
    "maxmemory": "1073741824",
    "maxmemory-policy": "noeviction",
    "role": "master",
    "config-error": None,
}


def _redis_checks(about: Deployment | None = None, **changed: str | None) -> list[Check]:
    settings = {**SAFE, **{k.replace("_", "-"): v for k, v in changed.items()}}
    broker: Broker = _Settings(settings)  # type: ignore[assignment]
    return diagnose(lambda: broker, "redis://h:6379/0", about or Deployment())


def _policy(checks: list[Check]) -> Check:
    (check,) = [c for c in checks if c.name == "redis maxmemory-policy"]
    return check


# -- the volatile-* rule -------------------------------------------------------------------
#
# A job's keys (its hash, the queue's sorted sets, the leases) carry no TTL, so a
# volatile-* policy never evicts a job. Only what the result store writes with an
# expiry can go: on the server that keeps the results that fails (with a limit set),
# elsewhere it only warns, and neither the report nor the worker's line says a job is
# at risk.


@pytest.mark.parametrize(
    "policy", ["volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"]
)
def test_volatile_policies_evict_results_never_jobs(policy: str) -> None:
    here = _policy(_redis_checks(maxmemory_policy=policy))
    assert here.status is Status.FAIL
    assert "jobs, queues and leases carry none and are never evicted" in here.detail
    assert here.warning is not None and "stored results" in here.warning
    assert "jobs and their leases" not in here.warning

    elsewhere = _policy(
        _redis_checks(Deployment(results_url="sqlite:///r.db"), maxmemory_policy=policy)
    )
    assert elsewhere.status is Status.WARN
    assert "nothing of Sleipnir's here can be evicted" in elsewhere.detail
    assert elsewhere.warning is not None and "no job, queue or lease has one" in elsewhere.warning

    unlimited = _policy(_redis_checks(maxmemory_policy=policy, maxmemory="0"))
    assert unlimited.status is Status.WARN


def test_allkeys_policies_are_the_ones_that_evict_jobs() -> None:
    check = _policy(_redis_checks(maxmemory_policy="allkeys-lru"))
    assert check.status is Status.FAIL
    assert check.warning is not None and "jobs and their leases" in check.warning


def test_results_on_another_redis_server_are_elsewhere() -> None:
    other = Deployment(results_url="redis://other:6379/0")
    same_db_other_scheme = Deployment(results_url="rediss://h:6379/0")
    same = Deployment(results_url="redis://h:6379/0")
    for about, status in ((other, Status.WARN), (same_db_other_scheme, Status.WARN)):
        assert _policy(_redis_checks(about, maxmemory_policy="volatile-lru")).status is status
    assert _policy(_redis_checks(same, maxmemory_policy="volatile-lru")).status is Status.FAIL


# -- the worker's warnings are the report's -------------------------------------------------


SETTINGS = {
    "appendonly": ["yes", "no", None],
    "appendfsync": ["always", "everysec", "no", None],
    "maxmemory-policy": ["noeviction", "allkeys-lru", "volatile-ttl", "odd-policy", None],
    "maxmemory": ["0", "1073741824", None],
}


def test_every_warning_the_worker_logs_is_a_check_that_did_not_pass() -> None:
    durability = {"redis appendonly", "redis appendfsync", "redis maxmemory-policy"}
    for values in itertools.product(*SETTINGS.values()):
        changed = dict(zip(SETTINGS, values, strict=True))
        checks = _redis_checks(**{k.replace("-", "_"): v for k, v in changed.items()})
        logged = durability_warnings(checks)
        judged = [
            c for c in checks if c.name in durability and c.status in (Status.WARN, Status.FAIL)
        ]
        assert logged == [c.warning for c in judged], changed
        assert all(c.warning for c in judged), changed


def test_a_healthy_redis_gives_the_worker_nothing_to_say() -> None:
    assert durability_warnings(_redis_checks()) == []
    # Memory limits and roles are the doctor's matter, not a start-up warning.
    assert durability_warnings(_redis_checks(maxmemory="0", role="slave")) == []


def test_check_redis_and_the_broker_diagnosis_agree() -> None:
    facts = RedisFacts("yes", "everysec", "volatile-lru", 2**30, results_here=True)
    direct = check_redis(facts)
    through = _redis_checks(appendfsync="everysec", maxmemory_policy="volatile-lru")
    assert through[0] == Check("broker", Status.PASS, "redis://h:6379/0")
    assert through[1:] == direct
    assert [c.warning for c in through[1:]] == [c.warning for c in direct]


def test_an_unreachable_redis_is_a_failed_check_and_a_start_up_warning() -> None:
    def refuse() -> Broker:
        raise ConfigurationError("no route")

    (check,) = diagnose(refuse, "redis://h:6379/0", Deployment())
    assert check.status is Status.FAIL and check.detail == "no route"
    assert durability_warnings([check]) == [
        "could not check the broker's durability settings: no route"
    ]


def test_the_memory_broker_says_at_start_what_the_doctor_fails() -> None:
    broker = MemoryBroker("memory://", clock=FakeClock())
    (check,) = broker.diagnose()
    assert check.status is Status.FAIL
    assert broker.durability_warnings() == [
        "the memory broker keeps nothing: every job is lost when this process ends"
    ]


def test_postgres_rules() -> None:
    assert judge({"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}) == []
    (warning,) = judge({"fsync": "on", "synchronous_commit": "off", "full_page_writes": None})
    assert "synchronous_commit = off" in warning


def test_a_backend_that_only_overrides_durability_warnings_is_still_shown() -> None:
    class Old(MemoryBroker):
        diagnose = Broker.diagnose

        def durability_warnings(self) -> list[str]:
            return ["the disk is made of paper"]

    checks = Old("memory://", clock=FakeClock()).diagnose()
    assert [(c.name, c.status, c.detail) for c in checks] == [
        ("broker", Status.PASS, "memory://"),
        ("broker durability", Status.WARN, "the disk is made of paper"),
    ]


# -- the registry of schemes ---------------------------------------------------------------


def test_every_scheme_belongs_to_one_backend() -> None:
    schemes = [s for b in BACKENDS for s in b.schemes]
    assert len(schemes) == len(set(schemes))
    assert set(schemes) == {
        "memory", "sqlite", "redis", "rediss", "unix", "postgresql", "postgres", "amqp", "amqps",
    }  # fmt: skip
    assert [b.name for b in BACKENDS if not b.keeps_results] == ["RabbitMQ"]
    assert {b.name for b in BACKENDS if b.spans_hosts} == {"Redis", "PostgreSQL", "RabbitMQ"}
    assert not backend_for("unix:///run/redis.sock").spans_hosts


def test_an_unknown_scheme_is_one_error_listing_every_known_one() -> None:
    with pytest.raises(ConfigurationError) as caught:
        broker_from_url("kafka://u:secret@somewhere", FakeClock())
    message = str(caught.value)
    assert message.startswith("no broker for URL scheme 'kafka' in 'kafka://u:***@somewhere'")
    assert "secret" not in message
    for backend in BACKENDS:
        for scheme in backend.schemes:
            assert scheme in message


def test_a_backend_without_results_says_so() -> None:
    with pytest.raises(ConfigurationError, match="RabbitMQ keeps no results"):
        results_from_url("amqp://guest:guest@localhost/", FakeClock())
    assert App("amqp://guest:guest@localhost/").results_url.startswith("sqlite://")
