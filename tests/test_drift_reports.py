"""Drift reports: Slack roll-ups and heartbeats, forge issues, no re-alert, Slack outages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.forge.github import GitHubForge
from runner.notify.base import Message
from runner.notify.slack import RetryPolicy, SlackBotNotifier, SlackWebhookNotifier
from tests.support.drift_world import World, make_world
from tests.support.fake_github import FakeGitHub
from tests.support.fake_slack import FakeSlack

FAST = RetryPolicy(attempts=3, backoff_s=0.01, max_wait_s=0.05)


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    w = make_world(tmp_path, monkeypatch, {"alpha": "a", "beta": "b"})
    yield w
    w.store.close()


def test_webhook_and_bot_deliver_block_kit(slack: FakeSlack) -> None:
    message = Message("hello", ({"type": "section", "text": {"type": "mrkdwn", "text": "hi"}},))
    assert SlackWebhookNotifier(slack.webhook_url, policy=FAST).send(message).ok
    bot = SlackBotNotifier(slack.token, "#infra", base_url=slack.api_url, policy=FAST)
    assert bot.send(message).ok
    first, second = slack.messages()
    assert (first.via, first.text, first.blocks[0]["type"]) == ("webhook", "hello", "section")
    assert (second.via, second.channel) == ("api", "#infra")


def test_transient_failures_are_retried(slack: FakeSlack) -> None:
    slack.fail_next(2, status=503)
    delivery = SlackWebhookNotifier(slack.webhook_url, policy=FAST).send(Message("x"))
    assert (delivery.ok, delivery.attempts) == (True, 3)
    slack.fail_next(1, status=429)
    bot = SlackBotNotifier(slack.token, "#c", base_url=slack.api_url, policy=FAST)
    assert bot.send(Message("y")).attempts == 2


def test_bad_token_is_not_retried(slack: FakeSlack) -> None:
    bot = SlackBotNotifier("wrong", "#c", base_url=slack.api_url, policy=FAST)
    delivery = bot.send(Message("x"))
    assert (delivery.ok, delivery.attempts) == (False, 1)
    assert "invalid_auth" in delivery.error


def test_heartbeat_when_in_sync_and_one_alert_for_unchanged_drift(
    world: World, slack: FakeSlack
) -> None:
    service = world.service(notifier=SlackWebhookNotifier(slack.webhook_url, policy=FAST))
    service.scan(world.drift_repo())
    world.file("beta").write_text("edited")
    service.scan(world.drift_repo())
    service.scan(world.drift_repo())  # same drift again
    kinds = [m.text.split(":")[0] for m in slack.messages()]
    assert kinds == ["Drift scan finished", "Drift report", "Drift scan finished"]
    alert = slack.messages()[1]
    assert "beta/default" in alert.block_text and "content" in alert.block_text
    assert "already reported" in slack.messages()[2].text


def test_slack_down_does_not_fail_the_scan_and_alerts_later(world: World, slack: FakeSlack) -> None:
    service = world.service(notifier=SlackWebhookNotifier(slack.webhook_url, policy=FAST))
    world.file("alpha").write_text("edited")
    slack.down(503)
    report = service.scan(world.drift_repo())
    assert report.drifted[0].project == "alpha"
    assert service.last_delivery is not None and not service.last_delivery.ok
    slack.down(None)
    service.scan(world.drift_repo())  # the drift was never announced: announce it now
    assert [m.text.split(":")[0] for m in slack.messages()] == ["Drift report"]


def test_issue_opened_updated_and_closed(world: World) -> None:
    with FakeGitHub(token="t0ken", login="gitops-bot") as gh:
        gh.add_repo("acme/infra", clone_url=world.repo.path.as_uri())
        forge = GitHubForge(gh.api_url, "t0ken")
        service = world.service(forge_for=lambda repo: forge)
        repo = world.drift_repo(full_name="acme/infra")

        world.file("alpha").write_text("edited")
        service.scan(repo)
        (issue,) = gh.issues("acme/infra")
        assert issue.title == "Drift detected: acme/infra alpha/default"
        assert issue.state == "open" and "content" in issue.body

        requests_before = len(gh.requests)
        service.scan(repo)  # unchanged: not a single forge call
        assert len(gh.requests) == requests_before

        world.file("alpha").unlink()  # the drift changes: the object is gone now
        service.scan(repo)
        (updated,) = gh.issues("acme/infra")
        assert updated.state == "open" and updated.body != issue.body

        world.apply_all(["alpha"])  # fixed by hand
        report = service.scan(repo)
        assert report.all_in_sync
        (closed,) = gh.issues("acme/infra")
        assert closed.state == "closed"
        assert "Resolved" in gh.comments("acme/infra", closed.number)[-1].body
