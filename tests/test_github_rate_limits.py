"""GitHub's rate limits: every call waits as GitHub asks, within a bound, then fails clearly.

The fake GitHub answers the way GitHub does when a limit is hit: a secondary limit is a
403 (or 429) with `Retry-After`; a used-up primary limit is a 403 with
`x-ratelimit-remaining: 0` and the epoch second of `x-ratelimit-reset`. Waits here are
one or two seconds; nothing is timed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runner.events.model import RepoRef
from runner.forge.base import ForgeError
from runner.forge.github import GitHubForge
from runner.forge.rate_limits import rate_limit_wait
from tests.support.fake_github import FakeGitHub
from tests.support.github_payloads import post_delivery, pull_request_event
from tests.support.pr_world import (
    APP_CHANGE,
    APP_INSTALLATION,
    FULL_NAME,
    WEBHOOK_SECRET,
    ServedRunner,
)

pytest_plugins = ["tests.support.app_world"]  # the `app_world` fixture

TOKEN = "ghp_rate-limited-token"
HEAD = "a" * 40
BASE = "b" * 40


@pytest.fixture
def fake() -> Iterator[FakeGitHub]:
    with FakeGitHub(token=TOKEN) as gh:
        gh.add_repo(FULL_NAME, clone_url="file:///nonexistent/infra.git")
        yield gh


@pytest.fixture
def repo(fake: FakeGitHub) -> RepoRef:
    return RepoRef("github", FULL_NAME, "file:///x.git", f"{fake.url}/{FULL_NAME}", "main")


@pytest.fixture
def pr(fake: FakeGitHub) -> int:
    return fake.open_pull(FULL_NAME, head_sha=HEAD, head_ref="feature", base_sha=BASE)


def forge_for(fake: FakeGitHub, max_wait: float = 120.0) -> GitHubForge:
    return GitHubForge(fake.api_url, TOKEN, max_rate_limit_wait=max_wait, mergeable_poll=())


def sent(fake: FakeGitHub, method: str, path_end: str) -> int:
    return sum(1 for r in fake.requests if r.method == method and r.path.endswith(path_end))


# ---- end to end ---------------------------------------------------------------------------


def test_a_secondary_rate_limit_is_waited_out_and_the_plan_comment_still_lands(app_world):
    comments = rf"/repos/{FULL_NAME}/issues/\d+/comments"
    app_world.github.secondary_rate_limit_next("POST", comments, retry_after=1)
    head = app_world.push_branch("feature", APP_CHANGE)
    number = app_world.github.open_pull(
        FULL_NAME, head_sha=head, head_ref="feature", base_sha=app_world.main_sha()
    )
    pull = app_world.github.pull(FULL_NAME, number)
    payload = pull_request_event(
        "opened", app_world.github.repo(FULL_NAME), pull, pull.user, hosts=app_world.github.hosts
    )
    runner = ServedRunner(app_world.settings)
    try:
        reply = post_delivery(
            runner.url,
            "pull_request",
            payload | {"installation": {"id": APP_INSTALLATION}},
            WEBHOOK_SECRET,
        )
        assert reply.status_code == 202
        runner.wait_idle()
    finally:
        runner.stop()

    assert "`infra/app`" in app_world.last_comment(number)
    assert len(app_world.comments(number)) == 1  # the refused POST was not stored twice
    assert sent(app_world.github, "POST", f"/issues/{number}/comments") == 2


def test_a_burst_of_events_shares_one_installation_token_and_one_app_lookup(app_world):
    numbers = [app_world.open_pr(f"feature-{n}", APP_CHANGE) for n in range(2)]
    for number in numbers:
        app_world.comment(number, "gitops plan -p infra/app")
        app_world.comment(number, "gitops help")

    github = app_world.github
    assert sent(github, "POST", "/access_tokens") == 1
    assert sent(github, "GET", "/app") <= 1  # the bot's login, read once
    assert sent(github, "GET", f"/repos/{FULL_NAME}/installation") == 0  # the webhook said


# ---- the forge ----------------------------------------------------------------------------


def test_a_used_up_limit_is_waited_out_before_the_next_request_is_sent(fake, repo, pr):
    fake.set_rate_limit(remaining=1, reset_in=1)  # GitHub refuses everything until the reset
    forge = forge_for(fake)
    forge.pull_request(repo, pr)  # answered with x-ratelimit-remaining: 0

    forge.post_comment(repo, pr, "Plan")

    assert [c.body for c in fake.comments(FULL_NAME, pr)] == ["Plan"]
    assert sent(fake, "POST", f"/issues/{pr}/comments") == 1  # sent once, after the reset


def test_a_used_up_limit_resetting_beyond_the_bound_sends_nothing(fake, repo, pr):
    fake.set_rate_limit(remaining=1, reset_in=3600)
    forge = forge_for(fake)
    forge.pull_request(repo, pr)

    with pytest.raises(ForgeError, match=r"primary rate limit is used up until .* not sent"):
        forge.post_comment(repo, pr, "Plan")
    assert sent(fake, "POST", f"/issues/{pr}/comments") == 0


def test_a_429_with_retry_after_is_retried(fake, repo, pr):
    fake.fail_next(
        "GET", rf"/repos/{FULL_NAME}/pulls/{pr}", 429, "Too many", headers={"Retry-After": "1"}
    )

    assert forge_for(fake).pull_request(repo, pr).number == pr
    assert sent(fake, "GET", f"/pulls/{pr}") == 2


def test_a_used_up_primary_limit_waits_for_its_reset(fake, repo, pr):
    fake.primary_rate_limit_next("GET", rf"/repos/{FULL_NAME}/pulls/{pr}", reset_in=0.5)

    assert forge_for(fake).pull_request(repo, pr).number == pr
    assert sent(fake, "GET", f"/pulls/{pr}") == 2


def test_a_primary_429_waits_for_its_reset_too(fake, repo, pr):
    path = rf"/repos/{FULL_NAME}/issues/{pr}/comments"
    fake.primary_rate_limit_next("POST", path, reset_in=0.5, status=429)

    forge_for(fake).post_comment(repo, pr, "Plan")

    assert [c.body for c in fake.comments(FULL_NAME, pr)] == ["Plan"]


def test_a_reset_beyond_the_bound_fails_at_once_with_a_clear_error(fake, repo, pr):
    fake.primary_rate_limit_next("GET", rf"/repos/{FULL_NAME}/pulls/{pr}", reset_in=3600)

    with pytest.raises(ForgeError) as raised:
        forge_for(fake, max_wait=60).pull_request(repo, pr)

    message = str(raised.value)
    assert "read the pull request: HTTP 403: rate limited: GitHub asks to wait" in message
    assert "GITOPS_GITHUB_RATE_LIMIT_MAX_WAIT (60 s)" in message
    assert sent(fake, "GET", f"/pulls/{pr}") == 1


def test_a_secondary_limit_asking_too_long_is_not_waited_for(fake, repo, pr):
    path = rf"/repos/{FULL_NAME}/issues/{pr}/comments"
    fake.secondary_rate_limit_next("POST", path, retry_after=900)

    with pytest.raises(ForgeError, match="wait 900 s"):
        forge_for(fake).post_comment(repo, pr, "Plan")
    assert fake.comments(FULL_NAME, pr) == []


def test_a_rate_limit_that_persists_gives_up_after_a_few_tries(fake, repo, pr):
    fake.secondary_rate_limit_next("GET", rf"/repos/{FULL_NAME}/pulls/{pr}", times=10)

    with pytest.raises(ForgeError, match="HTTP 403"):
        forge_for(fake).pull_request(repo, pr)
    assert sent(fake, "GET", f"/pulls/{pr}") == 4  # one try and three retries


def test_a_403_that_is_no_rate_limit_is_not_retried(fake, repo, pr):
    fake.fail_next("GET", rf"/repos/{FULL_NAME}/pulls/{pr}", 403, "Resource not accessible")

    with pytest.raises(ForgeError, match="HTTP 403: Resource not accessible"):
        forge_for(fake).pull_request(repo, pr)
    assert sent(fake, "GET", f"/pulls/{pr}") == 1


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({"Retry-After": "30"}, 30.0),
        ({"Retry-After": "30", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1100"}, 30.0),
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1100"}, 101.0),
        ({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "900"}, 1.0),  # already reset
        ({"X-RateLimit-Remaining": "12", "X-RateLimit-Reset": "1100"}, None),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, None),  # GitHub sends seconds
        ({}, None),
    ],
)
def test_the_wait_github_asks_for(headers, wait):
    assert rate_limit_wait(headers, now=1000.0) == wait
