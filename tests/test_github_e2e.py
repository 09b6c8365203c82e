"""GitHub end to end over HTTP: signed webhooks into the served runner, jobs through the
persisted queue, real Terraform, comments and statuses on the fake GitHub."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.jobs.model import encode_event
from runner.store.jobs import JobStatus
from runner.store.owners import hostname, new_owner_id
from runner.store.store import Store
from tests.support.github_payloads import issue_comment_event, post_delivery, pull_request_event
from tests.support.pr_world import (
    APP_CHANGE,
    FULL_NAME,
    WEBHOOK_SECRET,
    PullRequestWorld,
    ServedRunner,
    make_world,
)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[PullRequestWorld]:
    with make_world(tmp_path, workers=2) as built:
        yield built


def open_pull(world: PullRequestWorld, branch: str, files: dict[str, str]) -> int:
    head = world.push_branch(branch, files)
    number = world.github.open_pull(
        FULL_NAME, head_sha=head, head_ref=branch, base_sha=world.main_sha(), user="alice"
    )
    world._branches[number] = branch
    return number


def pr_payload(world: PullRequestWorld, action: str, number: int) -> dict:
    pull = world.github.pull(FULL_NAME, number)
    return pull_request_event(
        action, world.github.repo(FULL_NAME), pull, pull.user, hosts=world.github.hosts
    )


def comment_payload(world: PullRequestWorld, number: int, body: str, user: str) -> dict:
    comment_id = world.github.add_comment(FULL_NAME, number, body, user)
    return issue_comment_event(
        "created",
        world.github.repo(FULL_NAME),
        number,
        body,
        user,
        comment_id,
        hosts=world.github.hosts,
    )


def test_push_plan_apply_merge_through_http(world):
    runner = ServedRunner(world.settings)
    try:
        number = open_pull(world, "feature", APP_CHANGE)
        reply = post_delivery(
            runner.url, "pull_request", pr_payload(world, "opened", number), WEBHOOK_SECRET
        )
        assert reply.status_code == 202
        runner.wait_idle()
        assert "`infra/app`" in world.last_comment(number)

        payload = comment_payload(world, number, "gitops apply", "alice")
        assert post_delivery(runner.url, "issue_comment", payload, WEBHOOK_SECRET).ok
        runner.wait_idle()
        assert "applied" in world.last_comment(number).lower()

        merge_sha = world.merge_without_event(number)
        assert post_delivery(
            runner.url, "pull_request", pr_payload(world, "closed", number), WEBHOOK_SECRET
        ).ok
        runner.wait_idle()
        assert world.services.store.locks.list() == []
        assert merge_sha
    finally:
        runner.stop()


def test_forged_and_duplicate_deliveries_run_nothing(world):
    runner = ServedRunner(world.settings)
    try:
        number = open_pull(world, "feature", APP_CHANGE)
        payload = pr_payload(world, "opened", number)
        assert post_delivery(runner.url, "pull_request", payload, "wrong").status_code == 401
        assert post_delivery(runner.url, "pull_request", payload, None).status_code == 401
        first = post_delivery(
            runner.url, "pull_request", payload, WEBHOOK_SECRET, delivery_id="d-1"
        )
        again = post_delivery(
            runner.url, "pull_request", payload, WEBHOOK_SECRET, delivery_id="d-1"
        )
        assert (first.status_code, again.json()["status"]) == (202, "duplicate")
        runner.wait_idle()
        assert len(world.services.store.jobs.list()) == 1
    finally:
        runner.stop()


def test_a_job_queued_before_a_crash_runs_after_the_restart(world):
    number = open_pull(world, "feature", APP_CHANGE)
    crashed = ServedRunner(world.settings, start_workers=False)  # accepts, never works
    reply = post_delivery(
        crashed.url, "pull_request", pr_payload(world, "opened", number), WEBHOOK_SECRET
    )
    assert reply.status_code == 202
    crashed.stop(workers=False)
    assert world.comments(number) == []

    restarted = ServedRunner(world.settings)
    try:
        restarted.wait_idle()
        assert "`infra/app`" in world.last_comment(number)
    finally:
        restarted.stop()


def test_an_apply_cut_short_by_a_crash_is_reported_and_not_rerun(world):
    number = open_pull(world, "feature", APP_CHANGE)
    world.deliver_pr("opened", number)  # planned
    payload = comment_payload(world, number, "gitops apply", "alice")
    event = __import__("runner.events.github", fromlist=["x"]).parse_github_event(
        "issue_comment", payload
    )
    store = Store.open(world.settings.resolved_database_url)
    kind, body = encode_event(event)
    job_id = store.jobs.enqueue(kind, body)
    # A worker of a process of this host that no longer exists took it and died mid-apply.
    dead_worker = new_owner_id(f"{hostname()}:{2**22 + 17}:1", "w0")
    assert store.jobs.claim(dead_worker) is not None

    runner = ServedRunner(world.settings)
    try:
        runner.wait_idle()
        assert store.jobs.get(job_id).status is JobStatus.INTERRUPTED
        assert "interrupted" in world.last_comment(number)
        runs = world.services.store.runs.list_runs(pr_number=number)
        assert not [r for r in runs if r.command == "apply"]
    finally:
        runner.stop()
        store.close()


def test_concurrent_handling_is_safe(world):
    """Two PRs planned at once by two workers each plan their own project."""
    runner = ServedRunner(world.settings)
    try:
        first = open_pull(world, "one", APP_CHANGE)
        second = open_pull(world, "two", {"infra/db/extra.tf": "# db\n"})
        threads = [
            threading.Thread(
                target=post_delivery,
                args=(runner.url, "pull_request", pr_payload(world, "opened", n), WEBHOOK_SECRET),
            )
            for n in (first, second)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        runner.wait_idle()
        assert "`infra/app`" in world.last_comment(first)
        assert "`infra/db`" in world.last_comment(second)
    finally:
        runner.stop()
