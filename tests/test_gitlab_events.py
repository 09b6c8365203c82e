"""GitLab hooks become the same events GitHub's do, and what the runner ignores stays 2xx."""

from __future__ import annotations

import pytest

from runner.events.commands import Command
from runner.events.gitlab import parse_gitlab_event
from runner.events.model import (
    CommentEvent,
    IgnoredEvent,
    MalformedEvent,
    PullRequestEvent,
)
from tests.support.gitlab_payloads import (
    MERGE_REQUEST_HOOK,
    NOTE_HOOK,
    MergeRequest,
    Project,
    merge_request_hook,
    note_hook,
)

WEB = "https://gitlab.example.com"
PROJECT = Project(7, "acme/platform/infra", "https://gitlab.example.com/acme/platform/infra.git")
FORK = Project(8, "mallory/infra", "https://gitlab.example.com/mallory/infra.git")
MR = MergeRequest(
    id=70,
    iid=3,
    project_id=7,
    source_project_id=7,
    author="alice",
    sha="a" * 40,
    source_branch="feature",
    target_branch="main",
    start_sha="b" * 40,
)


def mr_event(action: str, mr: MergeRequest = MR, **options: object) -> object:
    payload = merge_request_hook(action, PROJECT, mr, user="alice", web=WEB, **options)  # type: ignore[arg-type]
    return parse_gitlab_event(MERGE_REQUEST_HOOK, payload)


def test_an_opened_merge_request_is_a_pull_request_event_keyed_by_host_and_path():
    event = mr_event("open")

    assert isinstance(event, PullRequestEvent)
    assert (event.action, event.pr.number, event.pr.head_sha) == ("opened", 3, "a" * 40)
    assert event.repo.key == "gitlab.example.com/acme/platform/infra"
    assert event.repo.clone_url == PROJECT.clone_url
    assert not event.pr.is_fork


def test_an_update_is_a_push_only_with_oldrev():
    assert isinstance(mr_event("update"), IgnoredEvent)  # a title or label edit
    pushed = mr_event("update", oldrev="c" * 40)
    assert isinstance(pushed, PullRequestEvent) and pushed.action == "updated"


def test_marking_a_draft_ready_is_ready_for_review():
    event = mr_event("update", changes={"draft": {"previous": True, "current": False}})

    assert isinstance(event, PullRequestEvent) and event.action == "ready"


def test_a_merge_carries_the_merge_commit_and_a_close_does_not():
    merged = mr_event("merge", MergeRequest(**{**MR.__dict__, "merge_commit_sha": "d" * 40}))
    closed = mr_event("close")

    assert isinstance(merged, PullRequestEvent) and merged.merged
    assert merged.merge_commit_sha == "d" * 40
    assert isinstance(closed, PullRequestEvent) and not closed.merged


def test_a_fast_forward_merge_applies_the_source_head():
    merged = mr_event("merge")

    assert isinstance(merged, PullRequestEvent) and merged.merge_commit_sha == "a" * 40


def test_a_merge_request_from_another_project_is_a_fork():
    fork_mr = MergeRequest(**{**MR.__dict__, "source_project_id": FORK.id})
    payload = merge_request_hook("open", PROJECT, fork_mr, user="mallory", web=WEB, source=FORK)

    event = parse_gitlab_event(MERGE_REQUEST_HOOK, payload)

    assert isinstance(event, PullRequestEvent) and event.pr.is_fork
    assert event.pr.head_repo_full_name == "mallory/infra"


@pytest.mark.parametrize("action", ["approved", "unapproved", "approval", "unapproval"])
def test_approval_actions_are_ignored(action):
    assert isinstance(mr_event(action), IgnoredEvent)


def test_a_note_on_a_merge_request_carries_its_parsed_command():
    payload = note_hook(PROJECT, MR, note_id=99, body="gitops plan -p app", user="bob", web=WEB)

    event = parse_gitlab_event(NOTE_HOOK, payload)

    assert isinstance(event, CommentEvent)
    assert (event.pr_number, event.comment_id, event.author) == (3, 99, "bob")
    assert isinstance(event.command, Command) and event.command.project == "app"


def test_an_edited_note_a_system_note_and_a_note_on_an_issue_are_ignored():
    edited = note_hook(
        PROJECT, MR, note_id=1, body="gitops apply", user="bob", web=WEB, action="update"
    )
    system = note_hook(PROJECT, MR, note_id=2, body="gitops apply", user="bob", web=WEB)
    system["object_attributes"]["system"] = True
    on_issue = note_hook(PROJECT, MR, note_id=3, body="gitops apply", user="bob", web=WEB)
    on_issue["object_attributes"]["noteable_type"] = "Issue"

    for payload in (edited, system, on_issue):
        assert isinstance(parse_gitlab_event(NOTE_HOOK, payload), IgnoredEvent)


def test_notes_of_project_access_token_bots_are_from_a_bot():
    payload = note_hook(
        PROJECT, MR, note_id=4, body="gitops plan", user="project_7_bot_1f2e", web=WEB
    )

    event = parse_gitlab_event(NOTE_HOOK, payload)

    assert isinstance(event, CommentEvent) and event.author_is_bot


@pytest.mark.parametrize("event", ["System Hook", "Tag Push Hook", "Pipeline Hook", "Job Hook"])
def test_other_hooks_are_ignored_unread(event):
    assert isinstance(parse_gitlab_event(event, {}), IgnoredEvent)


def test_a_malformed_merge_request_hook_names_the_field():
    payload = merge_request_hook("open", PROJECT, MR, user="alice", web=WEB)
    payload["object_attributes"]["iid"] = "3"

    with pytest.raises(MalformedEvent, match=r"object_attributes\.iid"):
        parse_gitlab_event(MERGE_REQUEST_HOOK, payload)
