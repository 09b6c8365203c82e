"""GitHub webhook signature checks and payload → event normalisation.

The payload builders below copy the nesting and field names of GitHub's real
webhook payloads (as in @octokit/webhooks-examples), trimmed to what matters.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
from typing import Any

import pytest

from runner.events.commands import Command
from runner.events.github import parse_github_event
from runner.events.model import (
    CommentEvent,
    IgnoredEvent,
    MalformedEvent,
    PingEvent,
    PullRequestEvent,
    RepoRef,
)
from runner.events.signature import verify_github_signature, verify_gitlab_token

HEAD_SHA = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
BASE_SHA = "f95f852bd8fca8fcc58a9a2d6c842781e32a215e"
MERGE_SHA = "c4295bd74fb0f4fda03689c3df3f2803b658fd85"


# --- payload builders ----------------------------------------------------------------------


def user(login: str = "octocat", type_: str = "User") -> dict[str, Any]:
    return {
        "login": login,
        "id": 5346,
        "node_id": "MDQ6VXNlcjUzNDY=",
        "html_url": f"https://github.com/{login}",
        "type": type_,
        "site_admin": False,
    }


def repository(full_name: str = "acme/infra", host: str = "github.com") -> dict[str, Any]:
    owner, name = full_name.split("/")
    return {
        "id": 186853002,
        "node_id": "MDEwOlJlcG9zaXRvcnkxODY4NTMwMDI=",
        "name": name,
        "full_name": full_name,
        "private": True,
        "owner": user(owner, "Organization"),
        "html_url": f"https://{host}/{full_name}",
        "fork": False,
        "clone_url": f"https://{host}/{full_name}.git",
        "ssh_url": f"git@{host}:{full_name}.git",
        "default_branch": "main",
    }


def pull_request_payload(
    action: str = "opened",
    *,
    number: int = 7,
    head_repo: str | None = "acme/infra",
    draft: bool = False,
    merged: bool = False,
    sender: str = "octocat",
) -> dict[str, Any]:
    base_repo = repository()
    return {
        "action": action,
        "number": number,
        "pull_request": {
            "url": f"https://api.github.com/repos/acme/infra/pulls/{number}",
            "id": 279147437,
            "html_url": f"https://github.com/acme/infra/pull/{number}",
            "number": number,
            "state": "closed" if action == "closed" else "open",
            "locked": False,
            "title": "Add a VPC",
            "user": user("alice"),
            "body": "Adds the network stack.",
            "merged_at": "2024-05-15T15:21:18Z" if merged else None,
            "merge_commit_sha": MERGE_SHA,
            "head": {
                "label": f"{(head_repo or 'ghost/x').split('/')[0]}:feature",
                "ref": "feature",
                "sha": HEAD_SHA,
                "user": user("alice"),
                "repo": repository(head_repo) if head_repo else None,
            },
            "base": {
                "label": "acme:main",
                "ref": "main",
                "sha": BASE_SHA,
                "user": user("acme", "Organization"),
                "repo": base_repo,
            },
            "author_association": "MEMBER",
            "draft": draft,
            "merged": merged,
            "mergeable": None,
            "merged_by": user("bob") if merged else None,
        },
        "repository": base_repo,
        "sender": user(sender),
    }


def issue_comment_payload(
    body: str = "gitops plan",
    *,
    action: str = "created",
    on_pull_request: bool = True,
    author: str = "alice",
    author_type: str = "User",
) -> dict[str, Any]:
    issue: dict[str, Any] = {
        "url": "https://api.github.com/repos/acme/infra/issues/7",
        "html_url": "https://github.com/acme/infra/pull/7",
        "id": 444500041,
        "number": 7,
        "title": "Add a VPC",
        "user": user("alice"),
        "state": "open",
        "locked": False,
        "body": "Adds the network stack.",
    }
    if on_pull_request:
        issue["pull_request"] = {
            "url": "https://api.github.com/repos/acme/infra/pulls/7",
            "html_url": "https://github.com/acme/infra/pull/7",
            "diff_url": "https://github.com/acme/infra/pull/7.diff",
            "patch_url": "https://github.com/acme/infra/pull/7.patch",
            "merged_at": None,
        }
    return {
        "action": action,
        "issue": issue,
        "comment": {
            "url": "https://api.github.com/repos/acme/infra/issues/comments/492700400",
            "html_url": "https://github.com/acme/infra/pull/7#issuecomment-492700400",
            "id": 492700400,
            "node_id": "MDEyOklzc3VlQ29tbWVudDQ5MjcwMDQwMA==",
            "user": user(author, author_type),
            "created_at": "2024-05-15T15:20:21Z",
            "author_association": "MEMBER",
            "body": body,
        },
        "repository": repository(),
        "sender": user(author, author_type),
    }


def ping_payload(*, with_repository: bool = True) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "zen": "Anything added dilutes everything else.",
        "hook_id": 109948940,
        "hook": {
            "type": "Repository",
            "id": 109948940,
            "name": "web",
            "active": True,
            "events": ["pull_request", "issue_comment"],
            "config": {"content_type": "json", "insecure_ssl": "0"},
        },
        "sender": user(),
    }
    if with_repository:
        payload["repository"] = repository()
    return payload


def without(payload: dict[str, Any], dotted: str) -> dict[str, Any]:
    """A deep copy of payload with one nested key removed."""
    result = copy.deepcopy(payload)
    *parents, last = dotted.split(".")
    node = result
    for key in parents:
        node = node[key]
    del node[last]
    return result


def with_value(payload: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A deep copy of payload with one nested key replaced."""
    result = copy.deepcopy(payload)
    *parents, last = dotted.split(".")
    node = result
    for key in parents:
        node = node[key]
    node[last] = value
    return result


# --- signature -----------------------------------------------------------------------------

SECRET = "It's a Secret to Everybody"
BODY = b"Hello, World!"
# The worked example from GitHub's "Validating webhook deliveries" documentation.
GITHUB_DOC_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_signature_matches_githubs_documented_example() -> None:
    assert verify_github_signature(BODY, GITHUB_DOC_SIGNATURE, SECRET)


def test_valid_signature() -> None:
    body = b'{"action":"opened","number":7}'
    assert verify_github_signature(body, sign(body), SECRET)


@pytest.mark.parametrize(
    "header",
    [
        sign(BODY, "another secret"),
        sign(BODY + b" "),
        GITHUB_DOC_SIGNATURE[:-1] + "0",
        "sha256=",
        "sha256=zz",
        "sha256=é",
    ],
)
def test_invalid_signature(header: str) -> None:
    assert not verify_github_signature(BODY, header, SECRET)


@pytest.mark.parametrize("header", [None, ""])
def test_missing_signature(header: str | None) -> None:
    assert not verify_github_signature(BODY, header, SECRET)


@pytest.mark.parametrize(
    "header",
    [
        GITHUB_DOC_SIGNATURE.removeprefix("sha256="),
        GITHUB_DOC_SIGNATURE.replace("sha256=", "sha1="),
        GITHUB_DOC_SIGNATURE.replace("sha256=", "SHA256="),
        "sha1=" + hmac.new(SECRET.encode(), BODY, hashlib.sha1).hexdigest(),
    ],
)
def test_wrong_prefix(header: str) -> None:
    assert not verify_github_signature(BODY, header, SECRET)


def test_empty_secret_is_refused_even_with_a_matching_signature() -> None:
    assert not verify_github_signature(BODY, sign(BODY, ""), "")


def test_gitlab_token() -> None:
    assert verify_gitlab_token("s3cret", "s3cret")
    assert not verify_gitlab_token("s3cret ", "s3cret")
    assert not verify_gitlab_token("other", "s3cret")
    assert not verify_gitlab_token(None, "s3cret")
    assert not verify_gitlab_token("", "s3cret")
    assert not verify_gitlab_token("é", "s3cret")
    assert not verify_gitlab_token("", "")


# --- pull_request --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("opened", "opened"),
        ("reopened", "opened"),
        ("synchronize", "updated"),
        ("ready_for_review", "ready"),
        ("closed", "closed"),
    ],
)
def test_pull_request_actions(action: str, expected: str) -> None:
    event = parse_github_event("pull_request", pull_request_payload(action))
    assert isinstance(event, PullRequestEvent)
    assert event.action == expected
    assert event.merged is False
    assert event.merge_commit_sha is None


def test_pull_request_fields() -> None:
    event = parse_github_event("pull_request", pull_request_payload("opened", sender="bob"))
    assert isinstance(event, PullRequestEvent)
    assert event.repo == RepoRef(
        forge="github",
        full_name="acme/infra",
        clone_url="https://github.com/acme/infra.git",
        html_url="https://github.com/acme/infra",
        default_branch="main",
    )
    assert event.repo.key == "github.com/acme/infra"
    pr = event.pr
    assert pr.number == 7
    assert pr.html_url == "https://github.com/acme/infra/pull/7"
    assert pr.author == "alice"
    assert (pr.head_sha, pr.head_ref) == (HEAD_SHA, "feature")
    assert (pr.base_sha, pr.base_ref) == (BASE_SHA, "main")
    assert pr.head_repo_full_name == "acme/infra"
    assert pr.is_fork is False
    assert pr.is_draft is False
    assert event.sender == "bob"


def test_merged_pull_request_carries_the_merge_commit() -> None:
    event = parse_github_event("pull_request", pull_request_payload("closed", merged=True))
    assert isinstance(event, PullRequestEvent)
    assert event.action == "closed"
    assert event.merged is True
    assert event.merge_commit_sha == MERGE_SHA


def test_closed_without_merge_has_no_merge_commit() -> None:
    # GitHub fills merge_commit_sha with a test merge even when nothing was merged.
    event = parse_github_event("pull_request", pull_request_payload("closed", merged=False))
    assert isinstance(event, PullRequestEvent)
    assert (event.merged, event.merge_commit_sha) == (False, None)


def test_draft_pull_request() -> None:
    event = parse_github_event("pull_request", pull_request_payload("opened", draft=True))
    assert isinstance(event, PullRequestEvent)
    assert event.pr.is_draft is True


def test_draft_field_absent_means_not_draft() -> None:
    payload = without(pull_request_payload("opened"), "pull_request.draft")
    event = parse_github_event("pull_request", payload)
    assert isinstance(event, PullRequestEvent)
    assert event.pr.is_draft is False


def test_fork_pull_request() -> None:
    event = parse_github_event("pull_request", pull_request_payload(head_repo="mallory/infra"))
    assert isinstance(event, PullRequestEvent)
    assert event.pr.is_fork is True
    assert event.pr.head_repo_full_name == "mallory/infra"
    assert event.repo.full_name == "acme/infra"


def test_same_repo_with_different_case_is_not_a_fork() -> None:
    event = parse_github_event("pull_request", pull_request_payload(head_repo="Acme/Infra"))
    assert isinstance(event, PullRequestEvent)
    assert event.pr.is_fork is False


def test_deleted_head_repository_counts_as_fork() -> None:
    event = parse_github_event("pull_request", pull_request_payload("closed", head_repo=None))
    assert isinstance(event, PullRequestEvent)
    assert event.pr.head_repo_full_name is None
    assert event.pr.is_fork is True


@pytest.mark.parametrize(
    "action",
    ["assigned", "labeled", "edited", "converted_to_draft", "review_requested", "locked"],
)
def test_other_pull_request_actions_are_ignored(action: str) -> None:
    event = parse_github_event("pull_request", pull_request_payload(action))
    assert isinstance(event, IgnoredEvent)
    assert action in event.reason


def test_ignored_action_is_not_validated_further() -> None:
    assert isinstance(parse_github_event("pull_request", {"action": "labeled"}), IgnoredEvent)


def test_enterprise_host_is_part_of_the_key() -> None:
    payload = pull_request_payload()
    payload["repository"] = repository(host="GHE.example.com:8443")
    event = parse_github_event("pull_request", payload)
    assert isinstance(event, PullRequestEvent)
    assert event.repo.key == "ghe.example.com:8443/acme/infra"


# --- issue_comment -------------------------------------------------------------------------


def test_comment_on_pull_request() -> None:
    event = parse_github_event("issue_comment", issue_comment_payload("gitops apply\nthanks"))
    assert event == CommentEvent(
        repo=RepoRef(
            forge="github",
            full_name="acme/infra",
            clone_url="https://github.com/acme/infra.git",
            html_url="https://github.com/acme/infra",
            default_branch="main",
        ),
        pr_number=7,
        comment_id=492700400,
        body="gitops apply\nthanks",
        author="alice",
        author_is_bot=False,
        command=Command(name="apply"),
    )


@pytest.mark.parametrize(
    ("login", "type_"),
    [("gitops-runner[bot]", "Bot"), ("dependabot[bot]", "Bot"), ("renovate[bot]", "User")],
)
def test_bot_comments_are_flagged(login: str, type_: str) -> None:
    event = parse_github_event(
        "issue_comment", issue_comment_payload(author=login, author_type=type_)
    )
    assert isinstance(event, CommentEvent)
    assert event.author_is_bot is True


def test_comment_on_plain_issue_is_ignored() -> None:
    event = parse_github_event("issue_comment", issue_comment_payload(on_pull_request=False))
    assert isinstance(event, IgnoredEvent)


def test_comment_with_null_pull_request_is_ignored() -> None:
    payload = with_value(issue_comment_payload(), "issue.pull_request", None)
    assert isinstance(parse_github_event("issue_comment", payload), IgnoredEvent)


@pytest.mark.parametrize("action", ["edited", "deleted"])
def test_edited_and_deleted_comments_are_ignored(action: str) -> None:
    event = parse_github_event("issue_comment", issue_comment_payload(action=action))
    assert isinstance(event, IgnoredEvent)


# --- ping and unknown events ---------------------------------------------------------------


def test_ping() -> None:
    event = parse_github_event("ping", ping_payload())
    assert isinstance(event, PingEvent)
    assert event.repo is not None and event.repo.key == "github.com/acme/infra"
    assert event.hook_id == 109948940
    assert event.zen


def test_organisation_ping_has_no_repository() -> None:
    event = parse_github_event("ping", ping_payload(with_repository=False))
    assert event == PingEvent(
        repo=None, hook_id=109948940, zen="Anything added dilutes everything else."
    )


@pytest.mark.parametrize("name", ["pull_request_review", "installation", "check_run", ""])
def test_unknown_events_are_ignored(name: str) -> None:
    assert isinstance(parse_github_event(name, {"action": "whatever"}), IgnoredEvent)


# --- malformed payloads --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dotted", "path_in_message"),
    [
        ("action", "action"),
        ("repository", "repository"),
        ("repository.full_name", "repository.full_name"),
        ("repository.html_url", "repository.html_url"),
        ("repository.clone_url", "repository.clone_url"),
        ("repository.default_branch", "repository.default_branch"),
        ("pull_request", "pull_request"),
        ("pull_request.number", "pull_request.number"),
        ("pull_request.user", "pull_request.user"),
        ("pull_request.head", "pull_request.head"),
        ("pull_request.head.sha", "pull_request.head.sha"),
        ("pull_request.head.ref", "pull_request.head.ref"),
        ("pull_request.base.sha", "pull_request.base.sha"),
        ("pull_request.base.ref", "pull_request.base.ref"),
        ("sender", "sender"),
    ],
)
def test_pull_request_missing_field(dotted: str, path_in_message: str) -> None:
    payload = without(pull_request_payload("synchronize"), dotted)
    with pytest.raises(MalformedEvent, match=path_in_message):
        parse_github_event("pull_request", payload)


def test_closed_pull_request_needs_merged_and_merge_commit() -> None:
    with pytest.raises(MalformedEvent, match=r"pull_request\.merged"):
        parse_github_event(
            "pull_request", without(pull_request_payload("closed"), "pull_request.merged")
        )
    merged = pull_request_payload("closed", merged=True)
    with pytest.raises(MalformedEvent, match=r"pull_request\.merge_commit_sha"):
        parse_github_event(
            "pull_request", with_value(merged, "pull_request.merge_commit_sha", None)
        )


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("action", 1),
        ("pull_request.number", "7"),
        ("pull_request.number", True),
        ("pull_request.head.sha", None),
        ("pull_request.head.repo", "acme/infra"),
        ("pull_request.draft", "false"),
        ("pull_request", []),
        ("repository.html_url", "not a url"),
        ("repository.html_url", "file:///etc/passwd"),
        ("repository.full_name", "infra"),
        ("repository.full_name", "a/b/c"),
    ],
)
def test_pull_request_wrong_type(dotted: str, value: Any) -> None:
    with pytest.raises(MalformedEvent, match=dotted.replace(".", r"\.")):
        parse_github_event(
            "pull_request", with_value(pull_request_payload("opened"), dotted, value)
        )


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("comment", None),
        ("comment.id", "492700400"),
        ("comment.body", None),
        ("comment.user", None),
        ("comment.user.login", 5),
        ("issue.number", None),
        ("repository", None),
    ],
)
def test_comment_malformed(dotted: str, value: Any) -> None:
    with pytest.raises(MalformedEvent, match=dotted.replace(".", r"\.")):
        parse_github_event("issue_comment", with_value(issue_comment_payload(), dotted, value))


@pytest.mark.parametrize("payload", [[], "x", None, 3])
def test_payload_must_be_an_object(payload: Any) -> None:
    with pytest.raises(MalformedEvent, match="payload"):
        parse_github_event("pull_request", payload)


def test_malformed_event_is_a_value_error() -> None:
    # The web layer can catch ValueError from JSON decoding and this alike.
    assert issubclass(MalformedEvent, ValueError)
