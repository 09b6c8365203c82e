"""Repository configuration: gitops-runner.yaml, atlantis.yaml v3 and autodiscovery."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runner.config.errors import ConfigError
from runner.config.loader import load_repo_config
from runner.config.model import DEFAULT_WHEN_MODIFIED, ProjectConfig
from tests.support.git_repo import GitRepo, sample_files, sample_repo


def write_config(tmp_path: Path, text: str, name: str = "gitops-runner.yaml") -> Path:
    """A repository holding the sample Terraform files and the given config file."""
    repo = GitRepo.init(tmp_path / "repo")
    repo.write(sample_files()).write({name: textwrap.dedent(text).lstrip("\n")})
    repo.commit("config")
    return repo.path


def config_error(tmp_path: Path, text: str, name: str = "gitops-runner.yaml") -> ConfigError:
    root = write_config(tmp_path, text, name)
    with pytest.raises(ConfigError) as caught:
        load_repo_config(root)
    return caught.value


# --- gitops-runner.yaml ---------------------------------------------------------------


def test_sample_runner_config_loads_with_defaults(tmp_path: Path) -> None:
    repo = sample_repo(tmp_path / "repo", config="gitops-runner")
    config = load_repo_config(repo.path)
    assert config.source == "gitops-runner.yaml"
    assert [p.name for p in config.projects] == ["infra/network", "infra/app", "infra/db"]
    app = config.project("infra/app")
    assert app is not None
    assert app.depends_on == ("infra/network", "infra/db")
    assert app.workspace == "default"
    assert app.apply == "both"  # the sample says so; the default is on_merge:
    assert ProjectConfig(name="x").apply == "on_merge"
    assert app.autoplan.when_modified == DEFAULT_WHEN_MODIFIED
    assert config.project("infra/db").apply_requirements == ("approved",)  # type: ignore[union-attr]
    assert config.warnings == ()


def test_every_field_is_read(tmp_path: Path) -> None:
    root = write_config(
        tmp_path,
        """
        version: 1
        parallel_plan: false
        parallel_apply: true
        projects:
          - name: app-prod
            dir: ./infra/app/
            workspace: prod
            autoplan:
              enabled: false
              when_modified: ["*.tf", "!old.tf"]
            apply_requirements: [approved, mergeable, undiverged]
            apply: both
            execution_order_group: 2
            terraform_version: "1.9.8"
            drift:
              enabled: true
              schedule: "0 6 * * 1-5"
              auto_correct: true
              allow_destroy: false
              window: "Mon-Fri 09:00-17:00"
        """,
    )
    config = load_repo_config(root)
    assert (config.parallel_plan, config.parallel_apply) == (False, True)
    (project,) = config.projects
    assert project == ProjectConfig(
        name="app-prod",
        dir="infra/app",
        workspace="prod",
        autoplan={"enabled": False, "when_modified": ("*.tf", "!old.tf")},
        apply_requirements=("approved", "mergeable", "undiverged"),
        apply="both",
        execution_order_group=2,
        terraform_version="1.9.8",
        drift={
            "enabled": True,
            "schedule": "0 6 * * 1-5",
            "auto_correct": True,
            "window": "Mon-Fri 09:00-17:00",
        },
    )


def test_default_names_are_unique_per_workspace(tmp_path: Path) -> None:
    root = write_config(
        tmp_path,
        """
        version: 1
        projects:
          - dir: infra/app
          - dir: infra/app
            workspace: staging
          - dir: .
        """,
    )
    names = [p.name for p in load_repo_config(root).projects]
    assert names == ["infra/app", "infra/app:staging", "."]


def test_yaml_anchors_and_merge_keys_work(tmp_path: Path) -> None:
    root = write_config(
        tmp_path,
        """
        version: 1
        projects:
          - &base
            dir: infra/app
            apply_requirements: [approved]
          - <<: *base
            dir: infra/db
        """,
    )
    db = load_repo_config(root).project("infra/db")
    assert db is not None and db.apply_requirements == ("approved",)


def test_missing_dir_is_a_warning(tmp_path: Path) -> None:
    root = write_config(tmp_path, "version: 1\nprojects:\n  - dir: infra/gone\n")
    (warning,) = load_repo_config(root).warnings
    assert (warning.file, warning.line) == ("gitops-runner.yaml", 3)
    assert "'infra/gone' does not exist" in warning.message


# --- errors: file, line, reason ---------------------------------------------------------


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    error = config_error(tmp_path, "version: 1\nprojects:\n  - dir: [infra/app\n  - dir: x\n")
    assert error.file == "gitops-runner.yaml"
    assert error.line == 4
    assert str(error).startswith("gitops-runner.yaml:4: invalid YAML")


def test_wrong_type_points_at_the_key(tmp_path: Path) -> None:
    error = config_error(
        tmp_path,
        """
        version: 1
        projects:
          - dir: infra/app
            autoplan:
              enabled: "yes"
        """,
    )
    assert (error.line, error.path) == (5, "projects[0].autoplan.enabled")
    assert "valid boolean" in error.reason and "'yes'" in error.reason


def test_wrong_literal_lists_allowed_values(tmp_path: Path) -> None:
    error = config_error(tmp_path, "version: 1\nprojects:\n  - dir: infra/app\n    apply: always\n")
    assert str(error).startswith("gitops-runner.yaml:4: projects[0].apply: Input should be")
    assert "'on_merge'" in error.reason


def test_wrong_item_in_list_points_at_the_item(tmp_path: Path) -> None:
    error = config_error(
        tmp_path,
        """
        version: 1
        projects:
          - dir: infra/app
            apply_requirements:
              - approved
              - signed
        """,
    )
    assert (error.line, error.path) == (6, "projects[0].apply_requirements[1]")


@pytest.mark.parametrize(
    ("text", "line", "path"),
    [
        ("version: 1\nprojets: []\n", 2, "projets"),
        (
            "version: 1\nprojects:\n  - dir: infra/app\n    resolved_workflow: custom\n",
            4,
            "projects[0].resolved_workflow",
        ),
    ],
)
def test_unknown_key_is_an_error(tmp_path: Path, text: str, line: int, path: str) -> None:
    error = config_error(tmp_path, text)
    assert (error.line, error.path, error.reason) == (line, path, "unknown key")


def test_version_is_required_and_checked(tmp_path: Path) -> None:
    assert config_error(tmp_path / "a", "projects: []\n").path == "version"
    error = config_error(tmp_path / "b", "version: 3\nprojects: []\n")
    assert (error.line, error.path) == (1, "version")


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("dir: ../../etc", "projects[0].dir: '../../etc' escapes the repository"),
        ("dir: infra/../../x", "projects[0].dir: 'infra/../../x' escapes the repository"),
        ("dir: /etc", "projects[0].dir: '/etc' is absolute"),
        ("{dir: infra/app, workspace: ../x}", "projects[0].workspace: '../x' is not a plain"),
        ("{dir: infra/app, name: my app}", "projects[0].name: 'my app' is not a plain"),
        ("{dir: infra/app, name: ../app}", "projects[0].name: '../app' is not a plain"),
    ],
)
def test_traversal_and_unsafe_names_are_refused(tmp_path: Path, entry: str, expected: str) -> None:
    error = config_error(tmp_path, f"version: 1\nprojects:\n  - {entry}\n")
    assert str(error).startswith(f"gitops-runner.yaml:3: {expected}")


def test_dir_escaping_through_a_symlink_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = write_config(tmp_path, "version: 1\nprojects:\n  - dir: infra/escape\n")
    (root / "infra" / "escape").symlink_to(outside)
    with pytest.raises(ConfigError, match=r":3: projects\[0\]\.dir: .* through a symlink"):
        load_repo_config(root)


def test_config_symlinked_outside_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.yaml"
    secret.write_text("version: 1\nprojects: [{dir: 'TOKEN=hunter2'}]\n")
    root = write_config(tmp_path, "version: 1\n")
    (root / "gitops-runner.yaml").unlink()
    (root / "gitops-runner.yaml").symlink_to(secret)
    with pytest.raises(ConfigError) as caught:
        load_repo_config(root)
    assert "hunter2" not in str(caught.value)
    assert caught.value.reason == "is a symlink pointing outside the repository"


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    error = config_error(
        tmp_path,
        """
        version: 1
        projects:
          - dir: infra/app
          - name: infra/app
            dir: infra/db
        """,
    )
    assert (error.line, error.path) == (4, "projects[1].name")
    assert error.reason == "duplicate project name 'infra/app' (also projects[0])"


def test_duplicate_yaml_keys_are_refused(tmp_path: Path) -> None:
    error = config_error(tmp_path, "version: 1\nprojects:\n  - dir: infra/app\n    dir: infra/db\n")
    assert (error.line, error.reason) == (4, "duplicate key 'dir'")


def test_unknown_dependency_is_refused(tmp_path: Path) -> None:
    error = config_error(
        tmp_path,
        """
        version: 1
        projects:
          - dir: infra/network
          - dir: infra/app
            depends_on:
              - infra/network
              - infra/nope
        """,
    )
    assert str(error) == (
        "gitops-runner.yaml:7: projects[1].depends_on[1]: unknown project 'infra/nope'"
    )


def test_dependency_cycle_is_refused(tmp_path: Path) -> None:
    error = config_error(
        tmp_path,
        """
        version: 1
        projects:
          - dir: infra/app
            depends_on: [infra/db]
          - dir: infra/db
            depends_on: [infra/network]
          - dir: infra/network
            depends_on: [infra/app]
        """,
    )
    assert error.line == 4
    assert error.reason == "dependency cycle: infra/app → infra/db → infra/network → infra/app"


def test_self_dependency_is_a_cycle(tmp_path: Path) -> None:
    error = config_error(tmp_path, "version: 1\nprojects:\n  - dir: x\n    depends_on: [x]\n")
    assert error.reason == "dependency cycle: x → x"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "the file is empty"),
        ("- a\n- b\n", "the top level must be a mapping"),
        ("version: 1\n---\nversion: 1\n", "invalid YAML"),
        ("version: !!python/object:os.system x\n", "invalid YAML"),
    ],
)
def test_malformed_documents_are_config_errors(tmp_path: Path, text: str, reason: str) -> None:
    assert config_error(tmp_path, text).reason.startswith(reason)


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    levels = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    error = config_error(tmp_path, "\n".join(levels) + "\n")
    assert "YAML nodes" in error.reason


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    root = write_config(tmp_path, "version: 1\n")
    (root / "gitops-runner.yaml").write_bytes(b"version: 1\nprojects: [\xff]\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_repo_config(root)


# --- atlantis.yaml v3 -------------------------------------------------------------------


def test_atlantis_sample_is_translated_with_warnings(tmp_path: Path) -> None:
    repo = sample_repo(tmp_path / "repo", config="atlantis")
    config = load_repo_config(repo.path)
    assert config.source == "atlantis.yaml"
    assert [(p.name, p.dir) for p in config.projects] == [
        ("network", "infra/network"),
        ("app", "infra/app"),
        ("db", "infra/db"),
    ]
    app, db = config.project("app"), config.project("db")
    assert app is not None and db is not None
    assert app.autoplan.when_modified == ("*.tf", "../../modules/**/*.tf")
    assert app.depends_on == ("network", "db")
    assert db.apply_requirements == ("approved",)
    assert {p.apply for p in config.projects} == {"comment"}  # Atlantis applies by comment
    assert [(w.line, w.message.split(":")[0]) for w in config.warnings] == [
        (2, "automerge"),
        (14, "projects[2].apply_requirements[1]"),
    ]
    network = config.project("network")
    assert network is not None and network.resolved_workflow is not None
    assert [s.kind for s in network.resolved_workflow.stage("plan").steps] == ["init", "plan"]


def test_atlantis_unsupported_keys_never_crash(tmp_path: Path) -> None:
    root = write_config(
        tmp_path,
        """
        version: 3
        automerge: true
        delete_source_branch_on_merge: true
        abort_on_execution_order_fail: true
        parallel_plan: false
        allowed_regexp_prefixes: [dev/]
        something_new: {a: 1}
        workflows: {custom: {plan: {steps: [init, plan]}}}
        projects:
          - dir: infra/app
            workspace: prod
            branch: /main/
            workflow: custom
            plan_requirements: [approved]
            import_requirements: [approved]
            custom_policy_check: true
            delete_source_branch_on_merge: false
            repo_locking: false
            repo_locks: {mode: disabled}
            silence_pr_comments: [apply]
            autoplan:
              enabled: true
              when_modified: ["*.tf"]
              later: true
            future_key: 1
        """,
        name="atlantis.yaml",
    )
    config = load_repo_config(root)
    (project,) = config.projects
    assert (project.name, project.workspace) == ("infra/app:prod", "prod")
    assert config.parallel_plan is False
    lines = [w.line for w in config.warnings]
    assert lines == sorted(lines) and len(lines) == 15
    assert config.warnings[-2].message == "projects[0].autoplan.later: unknown key; ignored"
    assert all(w.file == "atlantis.yaml" for w in config.warnings)


def test_atlantis_yml_spelling_is_read(tmp_path: Path) -> None:
    root = write_config(tmp_path, "version: 3\nprojects:\n  - dir: infra/db\n", "atlantis.yml")
    assert load_repo_config(root).projects[0].name == "infra/db"


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("version: 2\nprojects: []\n", 1, "version: Input should be 3"),
        ("version: 3\nprojects:\n  - workspace: x\n", 3, "projects[0]: dir is required"),
        ("version: 3\nprojects:\n  - dir: a\n    autoplan: yes\n", 4, "projects[0].autoplan"),
        ("version: 3\nprojects:\n  - dir: ../../x\n", 3, "escapes the repository"),
    ],
)
def test_atlantis_errors_in_honoured_keys(
    tmp_path: Path, text: str, line: int, fragment: str
) -> None:
    error = config_error(tmp_path, text, "atlantis.yaml")
    assert error.file == "atlantis.yaml" and error.line == line
    assert fragment in str(error)


def test_runner_config_wins_over_atlantis(tmp_path: Path) -> None:
    root = write_config(tmp_path, "version: 1\nprojects:\n  - dir: infra/db\n")
    (root / "atlantis.yaml").write_text("version: 3\nprojects:\n  - dir: infra/app\n")
    config = load_repo_config(root)
    assert config.source == "gitops-runner.yaml"
    assert [p.dir for p in config.projects] == ["infra/db"]
    assert config.warnings[0].file == "atlantis.yaml"


# --- autodiscovery ----------------------------------------------------------------------


def test_autodiscovery_skips_modules(tmp_path: Path) -> None:
    repo = sample_repo(tmp_path / "repo")
    config = load_repo_config(repo.path)
    assert config.source == "autodiscovery"
    assert [(p.name, p.dir, p.workspace) for p in config.projects] == [
        ("infra/app", "infra/app", "default"),
        ("infra/db", "infra/db", "default"),
        ("infra/network", "infra/network", "default"),
    ]
    assert config.module_dirs == ("modules/network-base", "modules/tags")


def test_autodiscovery_skips_hidden_dirs_and_finds_root_and_json(tmp_path: Path) -> None:
    repo = GitRepo.init(tmp_path / "repo")
    repo.write(
        {
            "main.tf": 'resource "terraform_data" "root" {}\n',
            ".github/ci.tf": "# not terraform config\n",
            "stacks/json/main.tf.json": '{"module": {"x": {"source": "../../lib/json-only"}}}',
            "lib/json-only/main.tf": 'resource "terraform_data" "m" {}\n',
            # Only mentioned in a comment: still a project.
            "stacks/commented/main.tf": '# module "x" { source = "../../lib/orphan" }\n',
            "lib/orphan/main.tf": 'resource "terraform_data" "o" {}\n',
        }
    )
    repo.commit("layout")
    (repo.path / "stacks/json/.terraform/modules").mkdir(parents=True)
    (repo.path / "stacks/json/.terraform/modules/x.tf").write_text("")
    config = load_repo_config(repo.path)
    assert [p.dir for p in config.projects] == [
        ".",
        "lib/orphan",
        "stacks/commented",
        "stacks/json",
    ]
    assert config.module_dirs == ("lib/json-only",)


def test_autodiscovery_warns_about_unnameable_dirs(tmp_path: Path) -> None:
    repo = GitRepo.init(tmp_path / "repo")
    repo.write({"my stack/main.tf": 'resource "terraform_data" "x" {}\n'})
    repo.commit("spaces")
    config = load_repo_config(repo.path)
    assert config.projects == ()
    assert "'my stack' skipped" in config.warnings[0].message


def test_autodiscovery_without_git(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    for rel, text in sample_files().items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    config = load_repo_config(root)
    assert [p.dir for p in config.projects] == ["infra/app", "infra/db", "infra/network"]
