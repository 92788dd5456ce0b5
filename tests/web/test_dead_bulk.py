"""Bulk actions on dead letters act on exactly the filtered set, after a confirmation."""

from __future__ import annotations

import html
import re

import pytest

from .conftest import Server

BILLING = ("billing-1", "billing-2", "billing-3")
OTHERS = tuple(f"other-{i}" for i in range(7))


@pytest.fixture
def dead(server: Server) -> dict[str, str]:
    """Ten dead letters, three of which match 'billing': argument -> job id."""
    ids = {
        why: server.client.post("/api/jobs", json={"task": "refuse", "args": [why]}).json()["id"]
        for why in BILLING + OTHERS
    }
    server.work()
    assert len(server.app.broker.dead_letters()) == 10
    return ids


def dead_ids(server: Server) -> set[str]:
    return {d.id for d in server.app.broker.dead_letters(limit=1000)}


def add_dead(server: Server, why: str) -> str:
    job_id = server.client.post("/api/jobs", json={"task": "refuse", "args": [why]}).json()["id"]
    server.work()
    assert isinstance(job_id, str)
    return job_id


def confirm_form(page: str) -> tuple[str, dict[str, list[str]]]:
    """The confirmation form's action and fields."""
    form = re.search(r'<form method="post" action="([^"]+)" id="confirm">(.*?)</form>', page, re.S)
    assert form is not None, page
    fields: dict[str, list[str]] = {}
    for name, value in re.findall(r'name="([^"]+)" value="([^"]*)"', form.group(2)):
        fields.setdefault(name, []).append(html.unescape(value))
    return form.group(1), fields


@pytest.mark.parametrize("action", ["retry", "delete"])
def test_a_filtered_bulk_action_on_the_page_acts_on_the_shown_letters_only(
    server: Server, dead: dict[str, str], action: str
) -> None:
    billing = {dead[why] for why in BILLING}
    page = server.client.get("/dead", params={"q": "billing"}).text
    assert set(re.findall(r'<table class="dead" data-id="([^"]+)"', page)) == billing
    form = rf'<form method="get" action="/dead/confirm"[^>]*id="{action}-all">(.*?)</form>'
    bulk = re.search(form, page, re.S)
    assert bulk is not None
    params = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', bulk.group(1)))
    assert params == {"action": action, "queue": "", "q": "billing"}
    assert f"{action.capitalize()} all 3 shown" in bulk.group(1)

    confirm = server.client.get("/dead/confirm", params=params)
    assert confirm.status_code == 200
    verb = action.capitalize()
    assert f"{verb} 3 dead letters matching 'billing'?" in html.unescape(confirm.text)
    target, fields = confirm_form(confirm.text)
    assert target == f"/dead/{action}"
    assert set(fields["id"]) == billing
    assert dead_ids(server) >= billing  # nothing done before the confirmation

    # A fourth match arrives after the confirmation was shown: it is not acted on.
    late = add_dead(server, "billing-late")
    r = server.client.post(target, data=fields)
    done = {"retry": "retried", "delete": "deleted"}[action]
    assert (r.status_code, r.headers["location"]) == (303, f"/dead?q=billing&{done}=3")
    assert dead_ids(server) == {dead[why] for why in OTHERS} | {late}
    if action == "retry":
        assert all(server.app.status(job_id) == "queued" for job_id in billing)
    shown = server.client.get(r.headers["location"]).text
    assert {"retry": "3 job(s) back on their queues", "delete": "3 dead letter(s) deleted"}[
        action
    ] in shown


def test_the_confirmation_names_the_filter_and_an_empty_match_does_nothing(
    server: Server, dead: dict[str, str]
) -> None:
    page = server.client.get("/dead/confirm", params={"action": "delete", "q": "other-1"}).text
    assert "Delete 1 dead letter matching 'other-1'?" in html.unescape(page)
    page = server.client.get(
        "/dead/confirm", params={"action": "retry", "q": "billing", "queue": "mail"}
    ).text
    assert "Retry 3 dead letters matching 'billing' in queue 'mail'?" in html.unescape(page)
    page = server.client.get("/dead/confirm", params={"action": "retry"}).text
    assert "Retry all 10 dead letters?" in html.unescape(page)
    nothing = server.client.get("/dead/confirm", params={"action": "retry", "q": "zzz"}).text
    assert "nothing to retry" in nothing and 'id="confirm"' not in nothing
    assert server.client.get("/dead/confirm", params={"action": "explode"}).status_code == 404
    assert len(dead_ids(server)) == 10


def test_the_api_lists_and_retries_the_filtered_set_only(
    server: Server, dead: dict[str, str]
) -> None:
    billing = {dead[why] for why in BILLING}
    listed = server.client.get("/api/dead", params={"q": "BILLING"}).json()["dead"]
    assert {d["id"] for d in listed} == billing

    r = server.client.post("/api/dead/retry", json={"all": True, "q": "billing", "expect": 4})
    assert r.status_code == 409 and "3 dead letter(s) match now, not 4" in r.json()["error"]
    assert len(dead_ids(server)) == 10

    r = server.client.post("/api/dead/retry", json={"all": True, "q": "billing", "expect": 3})
    assert r.status_code == 200
    assert set(r.json()["retried"]) == billing and r.json()["not_found"] == []
    assert dead_ids(server) == {dead[why] for why in OTHERS}
    assert all(server.app.status(job_id) == "queued" for job_id in billing)


def test_the_api_deletes_the_filtered_set_only(server: Server, dead: dict[str, str]) -> None:
    r = server.client.post("/api/dead/delete", json={"all": True, "q": "billing"})
    assert r.json() == {"deleted": 3}
    assert dead_ids(server) == {dead[why] for why in OTHERS}
    r = server.client.post("/api/dead/delete", json={"all": True, "queue": "default"})
    assert r.json() == {"deleted": 0}  # a filter that matches nothing is not "every one"
    r = server.client.post("/api/dead/retry", json={"all": True, "q": "zzz"})
    assert r.json() == {"retried": [], "not_found": []}
    assert len(dead_ids(server)) == 7
    bad = server.client.post("/api/dead/delete", json={"ids": [dead["other-1"]], "q": "x"})
    assert bad.status_code == 422
    # Without a filter, "all" is every dead letter, as before.
    assert server.client.post("/api/dead/delete", json={"all": True}).json() == {"deleted": 7}
