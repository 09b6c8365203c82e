"""Slack messages about applies, told as stories, plus the message rules on their own.

The PR world is the one of tests/test_pr_flow.py (real git, fake GitHub over HTTP, real
Terraform), with `GITOPS_SLACK_WEBHOOK_URL` pointed at a fake Slack on 127.0.0.1, so
the messages go through slack-sdk and the wire exactly as in production.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from runner.commands.pr_flow import PullRequestFlow
from runner.notify.base import Message
from runner.notify.events import (
    PullRequestSubject,
    RunLinks,
    apply_message,
    needs_attention_message,
)
from runner.notify.slack import RetryPolicy, SlackWebhookNotifier
from runner.results.masking import Masker
from runner.results.model import ApplyResult, ApplyStatus, PlanSummary
from runner.store.runs import RunRecord, RunStatus, Trigger
from tests.support.fake_slack import FakeSlack, SlackMessage
from tests.support.pr_world import APP_CHANGE, FULL_NAME, PullRequestWorld, make_world

PUBLIC_URL = "https://runner.example.org"
FAST = RetryPolicy(attempts=3, backoff_s=0.01, max_wait_s=0.05)
# Plans fine, fails when applied: the provisioner runs only during apply.
FAILING_APPLY = {
    "infra/app/boom.tf": (
        'resource "terraform_data" "boom" {\n'
        '  provisioner "local-exec" {\n'
        '    command = "echo boom >&2; exit 3"\n'
        "  }\n}\n"
    )
}


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def world(tmp_path: Path, slack: FakeSlack) -> Iterator[PullRequestWorld]:
    with make_world(tmp_path, slack_webhook_url=slack.webhook_url, public_url=PUBLIC_URL) as built:
        yield built


def apply_runs(world: PullRequestWorld, number: int) -> list[RunRecord]:
    runs = world.services.store.runs.list_runs(pr_number=number)
    return [run for run in runs if run.command == "apply"]


def only_message(slack: FakeSlack) -> SlackMessage:
    messages = slack.messages()
    assert len(messages) == 1, [m.text for m in messages]
    return messages[0]


# ---- stories -------------------------------------------------------------------------------


def test_an_apply_posts_success_with_the_pr_link_its_author_and_the_run(world, slack):
    number = world.open_pr("feature", APP_CHANGE, author="alice")
    assert slack.messages() == []  # plans are not announced

    world.comment(number, "gitops apply", user="bob")

    message = only_message(slack)
    (run,) = apply_runs(world, number)
    assert run.status is RunStatus.SUCCESS
    assert message.text.startswith(f"Apply succeeded: {FULL_NAME}#{number} by @alice")
    body = message.block_text
    assert f"{FULL_NAME}/pull/{number}" in body
    assert "@alice" in body and "applied by @bob" in body
    assert "`infra/app`" in body and "+2 ~0 -0" in body
    assert f"{PUBLIC_URL}/api/runs/{run.id}|run {run.id}" in body
    assert message.blocks[0]["type"] == "header"
    assert {"type": "actions"}.items() <= message.blocks[-1].items()


def test_a_failed_apply_posts_a_failure_with_the_error_and_the_run(world, slack):
    number = world.open_pr("boom", FAILING_APPLY)

    world.comment(number, "gitops apply")

    message = only_message(slack)
    (run,) = apply_runs(world, number)
    assert run.status is RunStatus.FAILED
    assert message.text.startswith(f"Apply failed: {FULL_NAME}#{number}")
    body = message.block_text
    assert ":x: `infra/app`" in body and "Error" in body
    assert "0/1 projects applied" in body
    assert f"{PUBLIC_URL}/api/runs/{run.id}/log|log" in body


def test_merging_applies_and_says_who_merged(world, slack):
    number = world.open_pr("feature", APP_CHANGE, author="alice")

    world.merge(number)

    message = only_message(slack)
    assert message.text.startswith("Apply succeeded")
    assert "merged by @" in message.block_text


def test_a_merge_that_needs_attention_says_so_with_the_merge_plan(world, slack):
    number = world.open_pr("feature", APP_CHANGE, author="alice")
    world.commit_on_main(
        {"infra/app/more.tf": 'resource "terraform_data" "more" {\n  input = "x"\n}\n'}
    )

    merge_sha = world.merge(number)

    message = only_message(slack)
    assert apply_runs(world, number) == []
    assert message.text.startswith(f"Needs attention: {FULL_NAME}#{number} by @alice")
    body = message.block_text
    assert "infra/app" in body and "terraform_data.more" in body
    assert f"`{merge_sha[:7]}`" in body
    merge_plans = [
        run
        for run in world.services.store.runs.list_runs(pr_number=number)
        if run.trigger is Trigger.MERGE and run.command == "plan"
    ]
    assert merge_plans and f"{PUBLIC_URL}/api/runs/{merge_plans[0].id}" in body


def test_slack_down_never_fails_the_apply(world, slack):
    quick = SlackWebhookNotifier(slack.webhook_url, policy=FAST)
    world.services = replace(world.services, notifier=quick)
    world.flow = PullRequestFlow(world.services)
    number = world.open_pr("feature", APP_CHANGE)
    slack.down(503)

    world.comment(number, "gitops apply")

    assert "applied" in world.last_comment(number).lower()
    assert [run.status for run in apply_runs(world, number)] == [RunStatus.SUCCESS]
    head = world.github.pull(FULL_NAME, number).head_sha
    assert world.statuses(head)["gitops/apply"] == "success"
    assert slack.requests == FAST.attempts and slack.messages() == []


def test_without_slack_nothing_is_sent_and_applies_work(tmp_path: Path, slack: FakeSlack):
    with make_world(tmp_path) as built:
        number = built.open_pr("feature", APP_CHANGE)
        built.comment(number, "gitops apply")
        assert [run.status for run in apply_runs(built, number)] == [RunStatus.SUCCESS]
    assert slack.requests == 0


# ---- the messages themselves ---------------------------------------------------------------

SUBJECT = PullRequestSubject(
    repo="acme/infra",
    number=7,
    url="https://github.com/acme/infra/pull/7",
    author="mallory",
    actor="alice",
    trigger=Trigger.COMMENT,
    commit="0123456789abcdef",
)


def result(project: str, *, failed: bool = False, run_id: int | None = 1, error: str = ""):
    return ApplyResult(
        project=project,
        dir=project,
        workspace="default",
        status=ApplyStatus.FAILED if failed else ApplyStatus.APPLIED,
        summary=PlanSummary(add=1),
        error=error,
        run_id=run_id,
    )


def blocks_text(message: Message) -> str:
    return json.dumps(message.blocks)


def test_names_and_errors_from_prs_cannot_inject_slack_markup():
    evil = result("<!channel> <https://evil.example|x>", failed=True, error="Error: a < b & c")
    message = apply_message(SUBJECT, [evil], RunLinks(PUBLIC_URL))
    body = blocks_text(message)
    assert "<!channel>" not in body and "<https://evil" not in body
    assert "&lt;!channel&gt;" in body and "a &lt; b &amp; c" in body


def test_without_a_public_url_runs_are_named_not_linked():
    message = apply_message(SUBJECT, [result("app", run_id=42)], RunLinks(""))
    assert "run 42" in blocks_text(message)
    assert "/api/runs/" not in blocks_text(message)
    assert all(b["type"] != "actions" or len(b["elements"]) == 1 for b in message.blocks)


def test_blocked_projects_fail_without_a_run_link():
    blocked = result("app", failed=True, run_id=None, error="not applied: depends on db")
    message = apply_message(SUBJECT, [blocked], RunLinks(PUBLIC_URL))
    assert "not applied: depends on db" in blocks_text(message)
    assert "/api/runs/" not in blocks_text(message)


def test_secrets_are_masked_in_messages():
    masker = Masker.from_secrets(["hunter2-secret-value"])
    leaky = result("app", failed=True, error="Error: password hunter2-secret-value refused")
    message = apply_message(SUBJECT, [leaky], RunLinks(PUBLIC_URL), masker.mask)
    attention = needs_attention_message(
        SUBJECT, ["`app`: hunter2-secret-value"], [], RunLinks(""), masker.mask
    )
    for sent in (message, attention):
        assert "hunter2" not in sent.text + json.dumps(sent.blocks)


def test_huge_applies_stay_within_slack_block_limits():
    results = [result(f"project-{n:04d}-{'x' * 80}") for n in range(2000)]
    message = apply_message(SUBJECT, results, RunLinks(PUBLIC_URL))
    assert len(message.blocks) <= 50
    sections = [b["text"]["text"] for b in message.blocks if b["type"] == "section"]
    assert all(len(text) <= 3000 for text in sections)
    assert "more lines" in sections[-1]
