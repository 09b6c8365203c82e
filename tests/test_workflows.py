"""Atlantis custom workflows, end to end: an Atlantis user's repository, unchanged.

The repository holds one root module planned in two workspaces, each with its own var
file passed by its workflow's `extra_args`, and `run` steps before and after Terraform.
Everything is real: git, the fake GitHub over HTTP, the embedded Terraform with local
state (`terraform_data`), the PR flow as a worker runs it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.store.runs import RunStatus
from tests.support.forge_world import ForgeWorld
from tests.support.mr_world import running_mr_world
from tests.support.pr_world import PullRequestWorld, make_world

WEB_MODULE = """variable "env" {
  type = string
}

variable "size" {
  type = number
}

resource "terraform_data" "web" {
  input = "${var.env}-${var.size}"
}

output "web" {
  value = terraform_data.web.output
}
"""

ATLANTIS_YAML = """version: 3
projects:
  - name: web-staging
    dir: stacks/web
    workspace: staging
    workflow: staging
  - name: web-production
    dir: stacks/web
    workspace: production
    workflow: production
workflows:
  staging:
    plan:
      steps:
        - init
        - plan:
            extra_args: ["-var-file", "staging.tfvars"]
  production:
    plan:
      steps:
        - init
        - plan:
            extra_args: ["-var-file=production.tfvars"]
"""

SHELL_WORKFLOW_YAML = """version: 3
projects:
  - name: web
    dir: stacks/web
    workspace: staging
    workflow: checked
workflows:
  checked:
    plan:
      steps:
        - run: echo "before init of $PROJECT_NAME in $WORKSPACE for PR $PULL_NUM by $USER_NAME"
        - init
        - env:
            name: GREETING
            value: hello-from-env
        - plan:
            extra_args: ["-var-file", "staging.tfvars"]
        - run: echo "after plan, $GREETING, branch=$HEAD_BRANCH_NAME"
    apply:
      steps:
        - run: echo "applying $PLANFILE"
        - apply
"""

REPO_FILES = {
    "stacks/web/main.tf": WEB_MODULE,
    "stacks/web/staging.tfvars": 'env  = "staging"\nsize = 1\n',
    "stacks/web/production.tfvars": 'env  = "production"\nsize = 3\n',
}


REPOS_YAML = """repos:
  - id: /.*/
    allowed_overrides: [workflow, apply_requirements]
    allow_custom_workflows: true
"""


def built_world(tmp_path: Path, **settings: object) -> Iterator[PullRequestWorld]:
    with make_world(tmp_path, **settings) as built:
        yield built


@pytest.fixture(params=["github", "gitlab"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ForgeWorld]:
    """The world with no server-side repo config, on each forge."""
    if request.param == "github":
        yield from built_world(tmp_path)
        return
    yield from running_mr_world(tmp_path)


@pytest.fixture
def custom_world(tmp_path: Path) -> Iterator[PullRequestWorld]:
    """The world under a repos.yaml that allows repositories their own workflows."""
    repos = tmp_path / "repos.yaml"
    repos.write_text(REPOS_YAML)
    yield from built_world(tmp_path, repo_config=repos)


def use_atlantis_repo(world: ForgeWorld, config: str) -> None:
    """Main holds only the Atlantis user's repository: atlantis.yaml and stacks/web."""
    origin = world.origin
    origin.checkout("main")
    origin.remove([p for p in ("gitops-runner.yaml",) if (origin.path / p).exists()])
    origin.write({**REPO_FILES, "atlantis.yaml": config})
    origin.commit("the Atlantis repository")
    origin.push("origin", "main")


def change(size_comment: str) -> dict[str, str]:
    return {"stacks/web/notes.tf": f"# {size_comment}\n"}


def test_per_workspace_var_files_from_workflows_plan_and_apply(world: ForgeWorld) -> None:
    use_atlantis_repo(world, ATLANTIS_YAML)

    number = world.open_pr("bump", change("bump"))

    comment = world.last_comment(number)
    assert "No value for required variable" not in comment
    assert "`web-staging`" in comment and "`web-production`" in comment
    assert '"staging-1"' in comment and '"production-3"' in comment
    assert "2 with changes" in comment

    world.comment(number, "atlantis apply")

    statuses = [
        (run.project, run.status)
        for run in world.services.store.runs.list_runs(pr_number=number)
        if run.command == "apply"
    ]
    assert sorted(statuses) == [
        ("web-production", RunStatus.SUCCESS),
        ("web-staging", RunStatus.SUCCESS),
    ]


def test_run_steps_refused_without_the_servers_permission(world: ForgeWorld) -> None:
    use_atlantis_repo(world, SHELL_WORKFLOW_YAML)

    number = world.open_pr("bump", change("bump"))

    comment = world.last_comment(number)
    assert "atlantis.yaml" in comment and "allow_custom_workflows" in comment
    assert "before init" not in comment
    assert world.services.store.runs.list_runs(pr_number=number) == []


def test_run_and_env_steps_show_their_output_where_they_ran(
    custom_world: PullRequestWorld,
) -> None:
    world = custom_world
    use_atlantis_repo(world, SHELL_WORKFLOW_YAML)

    number = world.open_pr("bump", change("bump"))

    comment = world.last_comment(number)
    before = comment.index(f"before init of web in staging for PR {number} by alice")
    plan = comment.index("terraform_data.web")
    after = comment.index("after plan, hello-from-env, branch=bump")
    assert before < plan < after

    world.comment(number, "gitops apply")
    assert "applying " in world.last_comment(number)
    assert "gitops-staging.tfplan" in world.last_comment(number)


def test_a_failing_run_step_fails_the_project_with_its_output(
    custom_world: PullRequestWorld,
) -> None:
    world = custom_world
    failing = SHELL_WORKFLOW_YAML.replace(
        'echo "after plan, $GREETING, branch=$HEAD_BRANCH_NAME"',
        'echo "policy says no" && exit 2',
    )
    use_atlantis_repo(world, failing)

    number = world.open_pr("bump", change("bump"))

    comment = world.last_comment(number)
    assert "policy says no" in comment and "1 failed" in comment
    world.comment(number, "gitops apply")
    assert "no plan to apply" in world.last_comment(number)


@pytest.mark.parametrize(
    "branch", ["x;touch${IFS}pwned", "x$(touch${IFS}pwned)", "x`touch${IFS}pwned`"]
)
def test_a_branch_name_never_runs_as_shell(custom_world: PullRequestWorld, branch: str) -> None:
    world = custom_world
    use_atlantis_repo(world, SHELL_WORKFLOW_YAML)

    number = world.open_pr(branch, change("bump"))

    comment = world.last_comment(number)
    assert f"branch={branch}" in comment.replace("\\", "")  # a value, printed verbatim
    checkout = world.services.working_copies.checkout(
        world.clone_url, f"pr-{number}", world.head_sha(number)
    )
    assert not list(checkout.rglob("pwned"))


# ---- Atlantis defaults and the workflow schema ----------------------------------------------


def test_atlantis_default_when_modified_patterns_and_module_patterns(tmp_path: Path) -> None:
    from runner.config.loader import load_repo_config
    from runner.projects.detection import affected_projects
    from runner.terraform.modules import ModuleGraph

    (tmp_path / "stacks/web").mkdir(parents=True)
    (tmp_path / "stacks/web/main.tf").write_text(WEB_MODULE)
    (tmp_path / "stacks/live").mkdir(parents=True)
    (tmp_path / "stacks/live/terragrunt.hcl").write_text("inputs = {}\n")
    (tmp_path / "atlantis.yaml").write_text(
        "version: 3\nprojects:\n"
        "  - dir: stacks/live\n"
        "  - dir: stacks/web\n"
        "    autoplan:\n"
        '      when_modified: ["*.tf", "../../modules/**/*.tf"]\n'
    )
    config = load_repo_config(tmp_path)
    graph = ModuleGraph.build(tmp_path)

    def planned(*files: str) -> list[str]:
        return [a.project.dir for a in affected_projects(config, list(files), graph)]

    assert planned("stacks/live/terragrunt.hcl") == ["stacks/live"]
    assert planned("stacks/live/.terraform.lock.hcl") == ["stacks/live"]
    assert planned("stacks/live/vars.tfvars") == ["stacks/live"]
    assert planned("modules/net/main.tf") == ["stacks/web"]
    assert planned("stacks/web/README.md") == []


def test_a_workspace_var_file_is_used_when_present(tmp_path: Path) -> None:
    from runner.engine.workflow_steps import workspace_var_file_args

    (tmp_path / "env").mkdir()
    (tmp_path / "env/staging.tfvars").write_text("x = 1\n")
    assert workspace_var_file_args(tmp_path, "staging") == ("-var-file=env/staging.tfvars",)
    assert workspace_var_file_args(tmp_path, "production") == ()
    (tmp_path / "env/production.tfvars").symlink_to("/etc/hostname")
    assert workspace_var_file_args(tmp_path, "production") == ()  # never outside the project


def test_comment_args_are_escaped_character_by_character() -> None:
    from runner.engine.workflow_steps import comment_args_value

    assert comment_args_value(["-target=a.b", "-var=x=$(id)"]) == (
        "\\-\\t\\a\\r\\g\\e\\t\\=\\a\\.\\b,\\-\\v\\a\\r\\=\\x\\=\\$\\(\\i\\d\\)"
    )


@pytest.mark.parametrize(
    ("workflows", "reason"),
    [
        ("{w: {plan: {steps: [init, plan, plan]}}}", "at most one `plan` step"),
        ("{w: {plan: {steps: [init]}}}", "needs a `plan` step, or `run` steps"),
        ("{w: {plan: {steps: [init, plan, apply]}}}", "`apply` does not belong in plan"),
        ("{w: {deploy: {steps: [init]}}}", "unknown stage"),
        ("{w: {plan: {steps: [{plan: {extra_args: -x}}]}}}", "must be a list of strings"),
        ("{w: {plan: {steps: [{run: ''}, plan]}}}", "non-empty shell line"),
        ("{w: {plan: {steps: [{env: {name: 'A B', value: x}}, plan]}}}", "variable name"),
        ("{w: {plan: {steps: [{env: {name: A}}, plan]}}}", "exactly one of `value`"),
        ("{w: {plan: {steps: [{run: {command: x, shell: 'sh -c'}}, plan]}}}", "program name"),
    ],
)
def test_bad_workflows_are_config_errors_with_the_line(
    tmp_path: Path, workflows: str, reason: str
) -> None:
    from runner.config.errors import ConfigError
    from runner.config.loader import load_repo_config

    (tmp_path / "atlantis.yaml").write_text(
        f"version: 3\nprojects:\n  - dir: .\n    workflow: w\nworkflows: {workflows}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_repo_config(tmp_path)
    assert caught.value.file == "atlantis.yaml" and caught.value.line == 5
    assert reason in caught.value.reason


def test_an_unknown_workflow_name_is_an_error(tmp_path: Path) -> None:
    from runner.config.errors import ConfigError
    from runner.config.loader import load_repo_config

    (tmp_path / "gitops-runner.yaml").write_text(
        "version: 1\nprojects:\n  - dir: .\n    workflow: nope\n"
    )
    with pytest.raises(ConfigError, match="workflow 'nope' is not defined"):
        load_repo_config(tmp_path)


RUN_ONLY_YAML = """version: 3
projects:
  - name: web
    dir: stacks/web
    workspace: staging
    workflow: wrapper
workflows:
  wrapper:
    plan:
      steps:
        - init
        - run: terraform plan -input=false -no-color -var-file=staging.tfvars -out "$PLANFILE"
    apply:
      steps:
        - run: terraform apply -input=false -no-color "$PLANFILE"
"""


def test_a_wrapper_workflow_of_run_steps_plans_and_applies(custom_world: PullRequestWorld) -> None:
    """Terragrunt-style: `run` steps do the plan and the apply themselves, with the
    runner's own Terraform on PATH (the embedded one when no binary is installed)."""
    world = custom_world
    use_atlantis_repo(world, RUN_ONLY_YAML)

    number = world.open_pr("bump", change("bump"))

    comment = world.last_comment(number)
    assert "1 with changes" in comment and '"staging-1"' in comment
    world.comment(number, "gitops apply")
    assert "Apply complete! Resources: 1 added" in world.last_comment(number)


COMMENT_ARGS_YAML = """version: 3
projects:
  - name: web
    dir: stacks/web
    workspace: staging
    workflow: echoing
workflows:
  echoing:
    plan:
      steps:
        - run: 'eval "echo flags: $COMMENT_ARGS"'
        - init
        - plan:
            extra_args: ["-var-file", "staging.tfvars"]
"""


def test_comment_flags_reach_a_run_step_only_as_escaped_text(
    custom_world: PullRequestWorld,
) -> None:
    """Even a step that `eval`s COMMENT_ARGS runs nothing from the comment."""
    world = custom_world
    use_atlantis_repo(world, COMMENT_ARGS_YAML)
    number = world.open_pr("bump", change("bump"))

    world.comment(number, """gitops plan -p web -- '-target=terraform_data.web["x;touch pwned"]'""")

    comment = world.last_comment(number)
    assert 'flags: -target=terraform_data.web["x;touch pwned"]' in comment
    assert not list(world.root.rglob("pwned"))


ENV_DUMP_YAML = """version: 3
projects:
  - name: web
    dir: stacks/web
    workspace: staging
    workflow: dump
workflows:
  dump:
    plan:
      steps:
        - run: env | sort
        - init
        - plan:
            extra_args: ["-var-file", "staging.tfvars"]
"""


def test_run_steps_never_see_the_runners_own_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A shell step of an allowed workflow still gets Terraform's allowlist only."""
    monkeypatch.setenv("GITOPS_UNRELATED_SECRET", "runner-secret-value-42")
    monkeypatch.setenv("DATABASE_PASSWORD", "db-secret-value-43")
    repos = tmp_path / "repos.yaml"
    repos.write_text(REPOS_YAML)
    for world in built_world(tmp_path, repo_config=repos):
        use_atlantis_repo(world, ENV_DUMP_YAML)
        number = world.open_pr("bump", change("bump"))
        comment = world.last_comment(number)
        assert f"PULL_NUM={number}" in comment and "WORKSPACE=staging" in comment
        assert "runner-secret-value-42" not in comment and "GITOPS_" not in comment
        assert "db-secret-value-43" not in comment
