"""The server-side repo config (GITOPS_REPO_CONFIG, Atlantis's repos.yaml schema).

What the operator allows decides what a repository's config may do: later entries win
key by key, a refused workflow or override is a clear PR comment (never silently
applied), server workflows and hooks run, and server apply_requirements gate applies
whatever the pull request says.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.config.errors import ConfigError
from runner.config.loader import load_repo_config
from runner.config.server_config import RepoRules, parse_server_config
from runner.store.runs import RunStatus
from tests.support.pr_world import PullRequestWorld, make_world
from tests.test_workflows import REPO_FILES, use_atlantis_repo

SERVER = """
repos:
  - id: /.*/
    apply_requirements: [mergeable]
    workflow: standard
  - id: github.com/acme/infra
    allowed_overrides: [workflow]
    allowed_workflows: [standard, staging]
    apply_requirements: [approved]
  - id: /^gitlab\\.com\\//
    allow_custom_workflows: true
workflows:
  standard:
    plan:
      steps: [init, plan]
  staging:
    plan:
      steps:
        - run: echo "server step in $WORKSPACE"
        - init
        - plan:
            extra_args: ["-var-file", "staging.tfvars"]
    apply:
      steps: [apply]
"""


def rules(repo_id: str, text: str = SERVER) -> RepoRules:
    return parse_server_config(textwrap.dedent(text), "repos.yaml").rules_for(repo_id)


# ---- the file -----------------------------------------------------------------------------


def test_later_entries_win_key_by_key() -> None:
    acme = rules("github.com/acme/infra")
    assert acme.apply_requirements == ("approved",)  # the later entry's value
    assert acme.workflow == "standard"  # kept from the first entry
    assert acme.allows("workflow") and not acme.allows("apply_requirements")
    assert not acme.allow_custom_workflows


def test_regex_ids_match_and_exact_ids_do_not_leak() -> None:
    other = rules("github.com/acme/other")
    assert other.apply_requirements == ("mergeable",) and not other.allows("workflow")
    assert rules("gitlab.com/team/infra").allow_custom_workflows
    # A repository named like the exact id's prefix is not that repository.
    assert rules("github.com/acme/infra-evil").apply_requirements == ("mergeable",)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("repos: [{id: /x/, workflow: nope}]", "workflow 'nope' is not defined"),
        ("repos: [{id: /x/, apply_requirements: [sudo]}]", "unknown requirement 'sudo'"),
        ("repos: [{id: '/[/'}]", "invalid regex"),
        ("repos: [{id: /x/, allow_everything: true}]", "unknown key 'allow_everything'"),
        ("repos: [{workflow: x}]", "each entry is a mapping with an `id`"),
        ("workflows: {w: {plan: {steps: [multienv]}}}", "`multienv` is not supported"),
        ("repos: [", "invalid YAML"),
    ],
)
def test_a_bad_server_config_is_a_clear_error(text: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=r"repos\.yaml") as caught:
        parse_server_config(text, "repos.yaml")
    assert reason in str(caught.value)


def test_atlantis_keys_without_effect_still_load() -> None:
    loaded = rules(
        "github.com/a/b",
        "repos: [{id: /.*/, branch: /main/, repo_locking: true, policy_check: false}]",
    )
    assert loaded.configured


# ---- what a repository's config may do ------------------------------------------------------


def write_repo(root: Path, config: str) -> Path:
    for name, text in {**REPO_FILES, "atlantis.yaml": textwrap.dedent(config)}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_a_workflow_override_the_server_did_not_allow_is_refused(tmp_path: Path) -> None:
    root = write_repo(
        tmp_path,
        """
        version: 3
        projects:
          - dir: stacks/web
            workflow: staging
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_repo_config(root, rules=rules("github.com/acme/other"))
    error = caught.value
    assert (error.file, error.line, error.path) == ("atlantis.yaml", 5, "projects[0].workflow")
    assert "allowed_overrides lacks `workflow`" in error.reason


def test_repo_workflows_are_refused_unless_custom_workflows_are_allowed(tmp_path: Path) -> None:
    root = write_repo(
        tmp_path,
        """
        version: 3
        projects:
          - dir: stacks/web
        workflows:
          mine:
            plan:
              steps: [init, plan]
        """,
    )
    with pytest.raises(ConfigError, match="allow_custom_workflows is false"):
        load_repo_config(root, rules=rules("github.com/acme/infra"))
    allowed = load_repo_config(root, rules=rules("gitlab.com/team/infra"))
    assert allowed.workflows["mine"].shell_allowed


def test_a_server_workflow_not_in_allowed_workflows_is_refused(tmp_path: Path) -> None:
    text = SERVER + "  other:\n    plan:\n      steps: [init, plan]\n"
    root = write_repo(tmp_path, "version: 3\nprojects:\n  - dir: stacks/web\n    workflow: other\n")
    with pytest.raises(ConfigError, match="not in allowed_workflows"):
        load_repo_config(root, rules=rules("github.com/acme/infra", text))


def test_the_server_workflow_is_every_projects_default(tmp_path: Path) -> None:
    root = write_repo(tmp_path, "version: 3\nprojects:\n  - dir: stacks/web\n")
    config = load_repo_config(root, rules=rules("github.com/acme/infra"))
    workflow = config.projects[0].resolved_workflow
    assert workflow is not None and (workflow.name, workflow.source) == ("standard", "server")


def test_an_apply_requirements_override_needs_the_servers_permission(tmp_path: Path) -> None:
    root = write_repo(
        tmp_path,
        "version: 3\nprojects:\n  - dir: stacks/web\n    apply_requirements: []\n"
        "  - dir: stacks/web\n    workspace: x\n    apply_requirements: [approved]\n",
    )
    with pytest.raises(ConfigError, match="lacks `apply_requirements`") as caught:
        load_repo_config(root, rules=rules("github.com/acme/infra"))
    assert caught.value.path == "projects[1].apply_requirements"


def test_without_a_server_config_repo_shell_steps_are_refused_and_the_rest_works(
    tmp_path: Path,
) -> None:
    root = write_repo(
        tmp_path,
        """
        version: 3
        projects:
          - dir: stacks/web
            workflow: tfvars
            apply_requirements: [approved]
        workflows:
          tfvars:
            plan:
              steps: [init, {plan: {extra_args: [-var-file=staging.tfvars]}}]
        """,
    )
    config = load_repo_config(root, rules=RepoRules.builtin())
    workflow = config.projects[0].resolved_workflow
    assert workflow is not None and not workflow.shell_allowed
    with_shell = (root / "atlantis.yaml").read_text().replace("steps: [init,", "steps: [{run: x},")
    (root / "atlantis.yaml").write_text(with_shell)
    with pytest.raises(ConfigError, match="need allow_custom_workflows"):
        load_repo_config(root, rules=RepoRules.builtin())


# ---- end to end ---------------------------------------------------------------------------


@pytest.fixture
def server_world(tmp_path: Path) -> Iterator[PullRequestWorld]:
    repos = tmp_path / "repos.yaml"
    repos.write_text(
        textwrap.dedent(
            """
            repos:
              - id: /acme/infra$/  # the fake GitHub's host is 127.0.0.1:PORT
                apply_requirements: [approved]
                workflow: staging
                pre_workflow_hooks:
                  - run: echo "hooked $PULL_NUM $HEAD_BRANCH_NAME" > hook-ran.txt
                post_workflow_hooks:
                  - run: echo "$COMMAND_NAME done" > post-hook-ran.txt
            workflows:
              staging:
                plan:
                  steps:
                    - run: echo "server step in $WORKSPACE, hook said $(cat ../../hook-ran.txt)"
                    - init
                    - plan:
                        extra_args: ["-var-file", "staging.tfvars"]
            """
        )
    )
    world = make_world(tmp_path, repo_config=repos)
    try:
        yield world
    finally:
        world.github.stop()
        world.services.store.close()


def test_server_workflow_hooks_and_requirements_end_to_end(server_world: PullRequestWorld) -> None:
    world = server_world
    use_atlantis_repo(world, "version: 3\nprojects:\n  - dir: stacks/web\n")

    number = world.open_pr("bump", {"stacks/web/notes.tf": "# bump\n"})

    comment = world.last_comment(number)
    assert f"server step in default, hook said hooked {number} bump" in comment
    assert '"staging-1"' in comment
    checkout = world.services.working_copies.checkout(
        world.clone_url, f"pr-{number}", world.head_sha(number)
    )
    assert (checkout / "post-hook-ran.txt").read_text() == "plan done\n"

    # The server requires approval, though the repository's config says nothing.
    world.comment(number, "gitops apply")
    assert "approved" in world.last_comment(number)
    world.approve(number)
    world.comment(number, "gitops apply")
    runs = world.services.store.runs.list_runs(pr_number=number)
    assert [r.status for r in runs if r.command == "apply"] == [RunStatus.SUCCESS]


def test_a_pr_cannot_switch_off_a_server_workflow_it_may_not_override(
    server_world: PullRequestWorld,
) -> None:
    world = server_world
    use_atlantis_repo(world, "version: 3\nprojects:\n  - dir: stacks/web\n")
    evil = (
        "version: 3\nprojects:\n  - dir: stacks/web\n    workflow: mine\n"
        "workflows:\n  mine:\n    plan:\n      steps: [{run: 'cat /etc/passwd'}, init, plan]\n"
    )

    number = world.open_pr("evil", {"atlantis.yaml": evil})

    comment = world.last_comment(number)
    assert "atlantis.yaml" in comment and "refused by the server" in comment
    assert "root:" not in comment
    assert world.services.store.runs.list_runs(pr_number=number) == []


def test_a_broken_server_config_stops_start_up(tmp_path: Path) -> None:
    from runner.settings import load_settings
    from runner.wiring import build_services

    bad = tmp_path / "repos.yaml"
    bad.write_text("repos: [{id: /x/, workflow: nope}]\n")
    settings = load_settings(data_dir=tmp_path / "data", repo_config=bad)
    with pytest.raises(ConfigError, match="workflow 'nope' is not defined"):
        build_services(settings)
    missing = load_settings(data_dir=tmp_path / "data", repo_config=tmp_path / "none.yaml")
    with pytest.raises(ConfigError, match="cannot read GITOPS_REPO_CONFIG"):
        build_services(missing)


def test_the_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    import os

    from runner.config.server_config import server_rules

    path = tmp_path / "repos.yaml"
    path.write_text("repos: [{id: /.*/, apply_requirements: [approved]}]\n")
    assert server_rules(path, "github.com/a/b").apply_requirements == ("approved",)
    path.write_text("repos: [{id: /.*/, apply_requirements: [mergeable, undiverged]}]\n")
    os.utime(path, ns=(1, 1))  # a different mtime whatever the clock's resolution
    assert server_rules(path, "github.com/a/b").apply_requirements == ("mergeable", "undiverged")


# ---- the CLI: drift scans under the server's rules -------------------------------------------


def test_drift_uses_the_server_workflow_and_a_broken_file_is_a_usage_error(
    tmp_path: Path,
) -> None:
    from tests.support.cli import run_cli
    from tests.support.git_repo import GitRepo

    repo = GitRepo.init(tmp_path / "repo")
    repo.write({**REPO_FILES, "atlantis.yaml": "version: 3\nprojects:\n  - dir: stacks/web\n"})
    repo.commit("web")
    repos = tmp_path / "repos.yaml"
    repos.write_text(
        "repos: [{id: /.*/, workflow: staging}]\n"
        "workflows:\n  staging:\n    plan:\n      steps:\n"
        "        - init\n        - plan: {extra_args: [-var-file=staging.tfvars]}\n"
    )
    data = tmp_path / "data"

    without = run_cli("drift", "--repo", str(repo.path), data_dir=data)
    assert without.returncode == 1 and "No value for required variable" in without.stdout
    served = run_cli(
        "drift", "--repo", str(repo.path), data_dir=data, GITOPS_REPO_CONFIG=str(repos)
    )
    assert served.returncode == 3, served.stdout + served.stderr  # pending: never applied
    repos.write_text("repos: [{id: /.*/, workflow: missing}]\n")
    broken = run_cli(
        "drift", "--repo", str(repo.path), data_dir=data, GITOPS_REPO_CONFIG=str(repos)
    )
    assert broken.returncode == 2 and "workflow 'missing' is not defined" in broken.stderr
