"""Who decides what is applied, told as attacks that must fail (issue 7, rows 3 and 5 to 9).

A PR deleting its own approval requirement, a merge into an unguarded branch, an
`apply: on_merge` project applied by comment, a stranger's plan applied by a
maintainer, a merge plan nobody reviewed: each test plays the attack end to end
(fake GitHub over HTTP through PyGithub, real git, real Terraform planning
`terraform_data`) and checks what people see: the PR's comments, the commit
statuses and the runs in the store. Each attack applied something on the old code.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.store.runs import RunRecord, RunStatus
from tests.support.pr_world import APP_CHANGE, DB_CHANGE, FULL_NAME, PullRequestWorld, make_world

READER = "eve"  # read permission (make_world); alice and bob may write

# The sample config (tests/support/git_repo.py) as a PR would rewrite it: infra/db under
# another name (same dir and workspace), its `apply_requirements: [approved]` gone. (A PR
# deleting the requirement outright is a story of both forges: tests/test_forge_e2e.py.)
DB_RENAMED_WITHOUT_REQUIREMENT = """version: 1
projects:
  - dir: infra/network
    apply: both
  - dir: infra/app
    apply: both
  - name: database
    dir: infra/db
    apply: both
"""

# A one-resource project whose input is fed by two separate files, so a PR and main
# can change the same resource's values without touching the same line.
SVC_FILES = {
    "infra/svc/main.tf": (
        'resource "terraform_data" "svc" {\n'
        "  input = {\n    size  = local.size\n    owner = local.owner\n  }\n}\n"
    ),
    "infra/svc/size.tf": 'locals {\n  size = "small"\n}\n',
    "infra/svc/owner.tf": 'locals {\n  owner = "team-a"\n}\n',
}
SVC_SIZE_CHANGE = {"infra/svc/size.tf": 'locals {\n  size = "large"\n}\n'}
SVC_OWNER_CHANGE = {"infra/svc/owner.tf": 'locals {\n  owner = "team-b"\n}\n'}
SVC_NEW_RESOURCE = {"infra/svc/extra.tf": 'resource "terraform_data" "extra" {\n  input = "x"\n}\n'}


def svc_config(extra: str = "    apply: both\n") -> str:
    """gitops-runner.yaml with infra/svc as its only project; `extra`: its other keys."""
    return "version: 1\nprojects:\n  - dir: infra/svc\n" + extra


@pytest.fixture
def world(tmp_path: Path) -> Iterator[PullRequestWorld]:
    yield from _world(tmp_path)


@pytest.fixture
def release_applies(tmp_path: Path) -> Iterator[PullRequestWorld]:
    """The server also applies merges into `release` (GITOPS_APPLY_BRANCHES=release)."""
    yield from _world(tmp_path, apply_branches=("release",))


def _world(tmp_path: Path, **settings: object) -> Iterator[PullRequestWorld]:
    with make_world(tmp_path, **settings) as built:
        yield built


# ---- reading the outcome -------------------------------------------------------------------


def runs(world: PullRequestWorld, number: int, command: str | None = None) -> list[RunRecord]:
    found = world.services.store.runs.list_runs(pr_number=number)
    return [run for run in found if command is None or run.command == command]


def applied(world: PullRequestWorld, number: int) -> bool:
    return any(run.status is RunStatus.SUCCESS for run in runs(world, number, "apply"))


def last_comment(world: PullRequestWorld, number: int) -> str:
    """The PR's last comment as GitHub shows it (Markdown escapes rendered)."""
    return world.last_comment(number).replace("\\", "")


def open_svc_pr(world: PullRequestWorld, config: str | None = None) -> int:
    """main gets the svc project (with `config`), then alice opens a PR changing its size."""
    world.commit_on_main({**SVC_FILES, "gitops-runner.yaml": config or svc_config()})
    return world.open_pr("svc", SVC_SIZE_CHANGE)


# ---- PRs into another branch (the world merges into main only) -----------------------------


def push_release_branch(world: PullRequestWorld) -> None:
    world.origin.branch("release", from_="main")
    world.origin.push("origin", "release")


def open_pr_into(world: PullRequestWorld, base: str, branch: str, files: dict[str, str]) -> int:
    head = world.push_branch(branch, files, base=base)
    number = world.github.open_pull(
        FULL_NAME,
        head_sha=head,
        head_ref=branch,
        base_sha=world.origin.repo.commit(base).hexsha,
        base_ref=base,
        user="alice",
        files=list(files),
    )
    world.deliver_pr("opened", number)
    return number


def merge_into(world: PullRequestWorld, base: str, number: int, branch: str) -> str:
    world.origin.checkout(base)
    world.origin.repo.git.merge("--no-ff", "-m", f"Merge pull request #{number}", branch)
    merge_sha = world.origin.head
    world.origin.push("origin", base)
    world.origin.checkout("main")
    world.github.merge(FULL_NAME, number, merge_commit_sha=merge_sha)
    world.deliver_pr("closed", number)
    return merge_sha


# ---- positive control ----------------------------------------------------------------------


def test_an_approved_pr_merged_into_main_is_applied_exactly_once(world):
    number = open_svc_pr(world, svc_config("    apply: both\n    apply_requirements: [approved]\n"))
    world.approve(number, reviewer="bob")

    merge_sha = world.merge(number)

    assert [run.status for run in runs(world, number, "apply")] == [RunStatus.SUCCESS]
    assert world.statuses(merge_sha)["gitops/apply: infra/svc"] == "success"
    assert "applied" in last_comment(world, number).lower()
    assert world.services.store.locks.list() == []


# ---- row 3: the PR's own config does not decide who may apply ------------------------------


def test_renaming_the_project_does_not_shed_its_requirement(world):
    number = world.open_pr(
        "rename", {"gitops-runner.yaml": DB_RENAMED_WITHOUT_REQUIREMENT, **DB_CHANGE}
    )

    world.comment(number, "gitops apply")

    reply = last_comment(world, number)
    assert "Not applied" in reply and "`approved`" in reply
    assert not applied(world, number)


# ---- row 5: apply on merge only into the default branch, only when requirements hold -------


def test_a_merge_into_another_branch_applies_nothing(world):
    push_release_branch(world)
    number = open_pr_into(world, "release", "to-release", APP_CHANGE)
    assert runs(world, number, "plan")  # autoplanned as usual

    merge_into(world, "release", number, "to-release")

    assert runs(world, number, "apply") == []
    assert "applied" not in last_comment(world, number).lower()
    assert world.services.store.locks.list() == []  # nothing left waiting


def test_a_merge_into_a_branch_the_server_names_is_applied(release_applies):
    world = release_applies
    push_release_branch(world)
    number = open_pr_into(world, "release", "to-release", APP_CHANGE)

    merge_into(world, "release", number, "to-release")

    assert [run.status for run in runs(world, number, "apply")] == [RunStatus.SUCCESS]
    assert "applied" in last_comment(world, number).lower()


def test_merging_an_unapproved_pr_does_not_apply_what_needs_approval(world):
    number = world.open_pr("db", DB_CHANGE)

    world.merge(number)

    assert runs(world, number, "apply") == []
    attention = last_comment(world, number)
    assert "Needs attention" in attention
    assert "`infra/db`" in attention and "`approved`" in attention


# ---- row 6: `apply: on_merge` (the default) is applied on merge only -----------------------


@pytest.mark.parametrize("mode", ["", "    apply: on_merge\n"], ids=["default", "on_merge"])
def test_an_on_merge_project_is_not_applied_by_comment_but_on_merge(world, mode):
    number = open_svc_pr(world, svc_config(mode))

    world.comment(number, "gitops apply", user="bob")

    reply = last_comment(world, number)
    assert "Not applied" in reply and "on_merge" in reply
    assert not applied(world, number)

    world.merge(number)

    assert [run.status for run in runs(world, number, "apply")] == [RunStatus.SUCCESS]


def test_a_comment_only_project_is_not_applied_on_merge_and_frees_its_lock(world):
    first = open_svc_pr(world, svc_config("    apply: comment\n"))

    world.merge(first)

    assert runs(world, first, "apply") == []
    second = world.open_pr("svc-owner", SVC_OWNER_CHANGE, author="bob")
    assert "locked" not in last_comment(world, second).lower()
    assert world.services.store.locks.list()[0].owner_pr == second


def test_a_pr_switching_its_project_to_apply_by_comment_is_still_refused(world):
    world.commit_on_main({**SVC_FILES, "gitops-runner.yaml": svc_config("")})
    number = world.open_pr(
        "by-comment",
        {**SVC_SIZE_CHANGE, "gitops-runner.yaml": svc_config("    apply: comment\n")},
    )

    world.comment(number, "gitops apply", user="bob")

    reply = last_comment(world, number)
    assert "Not applied" in reply and "on_merge" in reply
    assert not applied(world, number)


# ---- row 7: a plan replaced by a reader is never applied -----------------------------------


def test_a_readers_plan_replacing_the_saved_one_is_not_applied_by_a_writer(world):
    number = world.open_pr("feature", APP_CHANGE)

    world.comment(number, "gitops plan", user=READER)
    world.comment(number, "gitops apply", user="bob")

    reply = last_comment(world, number)
    assert "Not applied" in reply
    assert "write permission" in reply and "`gitops plan`" in reply
    assert not applied(world, number)

    world.comment(number, "gitops plan", user="bob")
    world.comment(number, "gitops apply", user="bob")

    assert applied(world, number)


# ---- rows 8 and 9: only the reviewed plan is applied after a merge -------------------------


def test_a_merge_plan_that_differs_is_never_applied_not_even_by_a_later_comment(world):
    number = open_svc_pr(world)
    world.commit_on_main(SVC_NEW_RESOURCE)  # main moves after the review

    world.merge(number)

    attention = last_comment(world, number)
    assert "Needs attention" in attention
    assert "terraform_data.extra" in attention
    assert runs(world, number, "apply") == []

    world.approve(number, reviewer="bob")
    world.comment(number, "gitops apply", user="bob")

    assert "no plan to apply" in last_comment(world, number)
    assert not applied(world, number)


def test_main_changing_the_same_resources_values_after_review_is_not_applied(world):
    number = open_svc_pr(world)  # the PR makes svc large
    world.commit_on_main(SVC_OWNER_CHANGE)  # main gives svc another owner: same address

    world.merge(number)

    attention = last_comment(world, number)
    assert "Needs attention" in attention
    assert "~ `terraform_data.svc` create: other attribute values" in attention
    assert runs(world, number, "apply") == []
