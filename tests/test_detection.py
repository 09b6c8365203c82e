"""Change detection on real git repositories: changed files → affected projects + reason."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest
import yaml

from runner.config.loader import load_repo_config
from runner.config.model import ProjectConfig, RepoConfig
from runner.projects.changes import ChangeDetectionError, changed_files
from runner.projects.detection import (
    ProjectSelectionError,
    affected_projects,
    matches_globs,
    select_projects,
)
from runner.terraform import modules
from runner.terraform.hcl_scan import lexical_local_calls
from runner.terraform.modules import CallChain, ModuleGraph
from tests.support.git_repo import GitRepo, sample_files, sample_repo


def open_pr(
    repo: GitRepo,
    write: Mapping[str, str] | None = None,
    remove: Iterable[str] = (),
    rename: Mapping[str, str] | None = None,
) -> list[str]:
    """Commit a change on branch `pr` off `main`; return the PR's changed files."""
    repo.branch("pr", from_="main").checkout("pr")
    repo.write(write or {}).remove(remove)
    for old, new in (rename or {}).items():
        repo.rename(old, new)
    repo.commit("the change")
    return changed_files(repo.path, "main", "pr")


def reasons(repo: GitRepo, files: list[str], cache_dir: Path | None = None) -> list[str]:
    """What the runner would plan for this change, as `reason` lines in config order."""
    graph = ModuleGraph.build(repo.path, cache_dir=cache_dir)
    config = load_repo_config(repo.path, graph=graph)
    return [a.reason for a in affected_projects(config, files, graph)]


def edit(repo: GitRepo, path: str, line: str = "# edited\n") -> dict[str, str]:
    return {path: (repo.path / path).read_text() + line}


@pytest.fixture
def sample(tmp_path: Path) -> GitRepo:
    return sample_repo(tmp_path / "repo")


# --- changed files ----------------------------------------------------------------------


def test_changed_files_are_the_pull_request_diff(sample: GitRepo) -> None:
    sample.branch("pr").checkout("pr").write({"infra/app/extra.tf": "\n"}).commit("pr")
    # A commit landing on main after the branch point is not the PR's change.
    sample.checkout("main").write({"infra/db/late.tf": "\n"}).commit("main moves on")
    assert changed_files(sample.path, "main", "pr") == ["infra/app/extra.tf"]


def test_rename_counts_old_and_new_path_and_deletion_counts(sample: GitRepo) -> None:
    files = open_pr(
        sample, remove=["infra/db/main.tf"], rename={"infra/app/variables.tf": "infra/app/vars.tf"}
    )
    assert files == ["infra/app/variables.tf", "infra/app/vars.tf", "infra/db/main.tf"]


def test_changed_files_errors_are_clear(sample: GitRepo, tmp_path: Path) -> None:
    with pytest.raises(ChangeDetectionError, match="nope"):
        changed_files(sample.path, "main", "nope")
    other = GitRepo.init(tmp_path / "other")
    other.write({"a.txt": "a"}).commit("unrelated")
    sample.repo.git.fetch(str(other.path), "main:unrelated")
    with pytest.raises(ChangeDetectionError, match="no common ancestor"):
        changed_files(sample.path, "main", "unrelated")


def test_the_one_process_diff_answers_as_merge_base_then_diff(sample: GitRepo) -> None:
    """`git diff base...head` (one process) against the two steps it replaced, on a
    criss-cross history (two merge-bases) and through a ref whose name has a dot (which
    takes the two steps)."""
    sample.branch("a").branch("b")
    sample.checkout("a").write({"infra/app/a.tf": "\n"}).commit("a1")
    sample.checkout("b").write({"infra/db/b.tf": "\n"}).commit("b1")
    git = sample.repo.git
    git.merge("--no-edit", "a")  # b now holds a1
    sample.checkout("a")
    git.merge("--no-edit", "b~1")  # a holds b1 before the merge: two merge-bases
    sample.write({"infra/app/a2.tf": "\n"}).commit("a2")
    sample.checkout("b").write({"infra/db/b2.tf": "\n"}).commit("b2")
    sample.branch("release.1", "b")
    assert len(git.merge_base("--all", "a", "b").split()) == 2

    for base, head in (("a", "b"), ("b", "a"), ("main", "b"), ("a", "release.1")):
        merge_base = git.merge_base(base, head)
        expected = sorted(git.diff("--name-only", "--no-renames", merge_base, head).split())
        assert changed_files(sample.path, base, head) == expected, (base, head)


# --- affected projects ------------------------------------------------------------------


def test_file_in_a_project(sample: GitRepo) -> None:
    files = open_pr(
        sample, {**edit(sample, "infra/app/main.tf"), **edit(sample, "infra/app/variables.tf")}
    )
    assert reasons(sample, files) == ["infra/app: files changed: main.tf, variables.tf"]


def test_shared_module_change_plans_every_caller(sample: GitRepo) -> None:
    files = open_pr(sample, edit(sample, "modules/tags/main.tf"))
    assert reasons(sample, files) == [
        "infra/app: calls modules/tags, which changed",
        "infra/db: calls modules/tags, which changed",
        "infra/network: calls modules/network-base → modules/tags, which changed",
    ]


def test_module_calling_module_change(sample: GitRepo) -> None:
    files = open_pr(sample, edit(sample, "modules/network-base/main.tf"))
    assert reasons(sample, files) == ["infra/network: calls modules/network-base, which changed"]


def test_both_modules_changed_keeps_reasons_short(sample: GitRepo) -> None:
    files = open_pr(
        sample,
        {**edit(sample, "modules/network-base/main.tf"), **edit(sample, "modules/tags/main.tf")},
    )
    assert "infra/network: calls modules/network-base, which changed" in reasons(sample, files)


def test_change_outside_any_project(sample: GitRepo) -> None:
    files = open_pr(
        sample, {"README.md": "new\n", "docs/runbook.md": "x\n", "modules/tags/README.md": "x"}
    )
    assert reasons(sample, files) == []


def test_rename_between_projects_plans_both(sample: GitRepo) -> None:
    files = open_pr(sample, rename={"infra/app/variables.tf": "infra/db/variables.tf"})
    assert reasons(sample, files) == [
        "infra/app: files changed: variables.tf",
        "infra/db: files changed: variables.tf",
    ]


def test_deleted_file_and_deleted_module_file(sample: GitRepo) -> None:
    sample.write({"modules/tags/outputs.tf": "\n", "infra/db/outputs.tf": "\n"}).commit("outputs")
    files = open_pr(sample, remove=["infra/db/outputs.tf", "modules/tags/outputs.tf"])
    assert reasons(sample, files) == [
        "infra/app: calls modules/tags, which changed",
        "infra/db: files changed: outputs.tf; calls modules/tags, which changed",
        "infra/network: calls modules/network-base → modules/tags, which changed",
    ]


def test_autoplan_disabled_is_never_affected(tmp_path: Path) -> None:
    repo = GitRepo.init(tmp_path / "repo")
    repo.write(sample_files()).write(
        {
            "gitops-runner.yaml": textwrap.dedent(
                """\
                version: 1
                projects:
                  - dir: infra/app
                    autoplan: {enabled: false}
                  - dir: infra/db
                """
            )
        }
    )
    repo.commit("config")
    files = open_pr(repo, {**edit(repo, "infra/app/main.tf"), **edit(repo, "modules/tags/main.tf")})
    assert reasons(repo, files) == ["infra/db: calls modules/tags, which changed"]


def custom_globs_repo(tmp_path: Path, when_modified: list[str]) -> GitRepo:
    repo = GitRepo.init(tmp_path / "repo")
    config = {
        "version": 1,
        "projects": [{"dir": "infra/app", "autoplan": {"when_modified": when_modified}}],
    }
    repo.write(sample_files()).write({"gitops-runner.yaml": _yaml(config)})
    repo.write({"shared/settings.yaml": "a: 1\n", "infra/app/experimental/x.tf": "\n"})
    repo.commit("config")
    return repo


def _yaml(data: object) -> str:
    return yaml.safe_dump(data)


def test_globs_with_negation(tmp_path: Path) -> None:
    repo = custom_globs_repo(tmp_path, ["**/*.tf", "!experimental/**"])
    files = open_pr(repo, {"infra/app/experimental/x.tf": "# x\n", "infra/app/README.md": "x"})
    assert reasons(repo, files) == []
    repo.checkout("main").repo.git.branch("-D", "pr")
    files = open_pr(repo, {"infra/app/experimental/x.tf": "# y\n", "infra/app/main.tf": "# y\n"})
    assert reasons(repo, files) == ["infra/app: files changed: main.tf"]


def test_later_patterns_win(tmp_path: Path) -> None:
    repo = custom_globs_repo(tmp_path, ["!**/*.tf", "main.tf"])
    files = open_pr(repo, {"infra/app/main.tf": "# y\n", "infra/app/variables.tf": "# y\n"})
    assert reasons(repo, files) == ["infra/app: files changed: main.tf"]


def test_parent_patterns_reach_outside_the_project(tmp_path: Path) -> None:
    repo = custom_globs_repo(tmp_path, ["*.tf", "../../shared/*.yaml", "!../../shared/x.yaml"])
    files = open_pr(
        repo,
        {
            "shared/settings.yaml": "a: 2\n",
            "shared/x.yaml": "excluded\n",
            "shared/deeper/y.yaml": "`*` stays in shared/\n",
            "infra/db/z.yaml": "elsewhere\n",
        },
    )
    assert reasons(repo, files) == ["infra/app: files changed: ../../shared/settings.yaml"]


def test_parent_patterns_with_wildcards(tmp_path: Path) -> None:
    repo = custom_globs_repo(tmp_path, ["../*/shared.tf"])
    files = open_pr(repo, {"infra/db/shared.tf": "\n", "other/db/shared.tf": "\n"})
    assert reasons(repo, files) == ["infra/app: files changed: ../db/shared.tf"]


def test_matches_globs_rules() -> None:
    assert matches_globs(["**/*.tf*"], "main.tf")
    assert matches_globs(["**/*.tf*"], "sub/dir/x.tfvars")
    assert not matches_globs(["**/*.tf*"], "../other/main.tf")  # magic never matches `..`
    assert not matches_globs(["*.tf"], "sub/main.tf")  # `*` stays in one directory
    assert matches_globs(["./*.tf"], "main.tf")
    assert matches_globs(["*.tf", "!main.tf", "main.tf"], "main.tf")
    assert not matches_globs(["*.tf", "!main.tf"], "main.tf")


def test_default_globs_leave_nested_projects_alone(tmp_path: Path) -> None:
    repo = GitRepo.init(tmp_path / "repo")
    repo.write(
        {
            "infra/main.tf": 'resource "terraform_data" "outer" {}\n',
            "infra/app/main.tf": 'resource "terraform_data" "inner" {}\n',
            "infra/templates/user-data.tftpl": "#!/bin/sh\n",
        }
    )
    repo.commit("nested")
    files = open_pr(
        repo, {"infra/app/main.tf": "# x\n", "infra/templates/user-data.tftpl": "# x\n"}
    )
    assert reasons(repo, files) == [
        "infra: files changed: templates/user-data.tftpl",
        "infra/app: files changed: main.tf",
    ]


def test_atlantis_variant(tmp_path: Path) -> None:
    repo = sample_repo(tmp_path / "repo", config="atlantis")
    files = open_pr(repo, edit(repo, "modules/tags/main.tf"))
    assert reasons(repo, files) == [
        "network: calls modules/network-base → modules/tags, which changed",
        "app: files changed: ../../modules/tags/main.tf; calls modules/tags, which changed",
        "db: calls modules/tags, which changed",
    ]


def test_cache_dir_gives_the_same_answer(sample: GitRepo, tmp_path: Path) -> None:
    files = open_pr(sample, edit(sample, "modules/tags/main.tf"))
    cache = tmp_path / "cache"
    cold = reasons(sample, files, cache_dir=cache)
    assert any(cache.rglob("*"))
    assert reasons(sample, files, cache_dir=cache) == cold
    for entry in cache.rglob("*"):
        if entry.is_file():
            entry.write_text("{not json")  # a damaged cache is only a miss
    assert reasons(sample, files, cache_dir=cache) == cold


# --- the module graph -------------------------------------------------------------------

TRICKY_CALLER = """\
# module "commented" {
#   source = "../../modules/commented"
# }

/*
module "block_comment" {
  source = "../../modules/block-comment"
}
*/

locals {
  doc = <<-EOT
    module "heredoc" {
      source = "../../modules/heredoc"
    }
  EOT
}

resource "terraform_data" "files" {
  input = { source = "../../modules/attribute" }
}

module "real" {
  source = "../../modules/real/"
}
"""


def tricky_repo(tmp_path: Path) -> GitRepo:
    repo = GitRepo.init(tmp_path / "repo")
    files = {"stacks/app/main.tf": TRICKY_CALLER}
    for name in ("commented", "block-comment", "heredoc", "attribute", "real"):
        files[f"modules/{name}/main.tf"] = f'resource "terraform_data" "{name}" {{}}\n'
    repo.write(files).commit("tricky")
    return repo


def test_only_real_module_blocks_count(tmp_path: Path) -> None:
    repo = tricky_repo(tmp_path)
    graph = ModuleGraph.build(repo.path)
    assert [c.module_dir for c in graph.modules_called_by("stacks/app")] == ["modules/real"]
    assert graph.module_dirs() == {"modules/real"}
    for name in ("commented", "block-comment", "heredoc", "attribute"):
        assert graph.callers_of(f"modules/{name}") == ()
    assert graph.callers_of("modules/real") == (CallChain("stacks/app", ("modules/real",)),)
    assert graph.problems == []


def test_graph_without_git_matches_graph_with_git(tmp_path: Path) -> None:
    repo = tricky_repo(tmp_path)
    plain = tmp_path / "plain"
    plain.mkdir()
    for source in repo.path.rglob("*.tf"):
        target = plain / source.relative_to(repo.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source.read_text())
    with_git, without_git = ModuleGraph.build(repo.path), ModuleGraph.build(plain)
    assert with_git.terraform_dirs() == without_git.terraform_dirs()
    assert with_git.module_dirs() == without_git.module_dirs()


def test_unparseable_file_keeps_its_candidate_calls(tmp_path: Path) -> None:
    repo = GitRepo.init(tmp_path / "repo")
    repo.write(
        {
            "stacks/app/main.tf": 'module "m" {\n  source = "../../modules/m"\n  broken = \n}\n',
            "modules/m/main.tf": "\n",
        }
    ).commit("broken")
    graph = ModuleGraph.build(repo.path)
    assert [c.caller for c in graph.callers_of("modules/m")] == ["stacks/app"]
    assert graph.problems and graph.problems[0].startswith("stacks/app/main.tf: cannot parse")


def test_symlinked_tf_file_outside_is_not_read(tmp_path: Path) -> None:
    outside = tmp_path / "outside.tf"
    outside.write_text('module "m" {\n  source = "../modules/m"\n}\n')
    repo = GitRepo.init(tmp_path / "repo")
    repo.write({"modules/m/main.tf": "\n", "app/main.tf": "\n"})
    (repo.path / "app" / "link.tf").symlink_to(outside)
    (repo.path / "app" / "real.tf").write_text('module "m" {\n  source = "../modules/m"\n}\n')
    repo.commit("symlink")
    plain = tmp_path / "plain"
    shutil.copytree(repo.path, plain, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    for root in (repo.path, plain):  # git grep --cached sees the link, not its target
        graph = ModuleGraph.build(root)
        assert [c.file for c in graph.modules_called_by("app")] == ["app/real.tf"]


def test_module_sources_leaving_the_repository_are_ignored(tmp_path: Path) -> None:
    repo = GitRepo.init(tmp_path / "repo")
    repo.write({"app/main.tf": 'module "m" {\n  source = "../../outside"\n}\n'}).commit("x")
    graph = ModuleGraph.build(repo.path)
    assert graph.modules_called_by("app") == ()


def test_transitive_callers_with_chains(sample: GitRepo) -> None:
    graph = ModuleGraph.build(sample.path)
    chains = {c.caller: c.describe() for c in graph.callers_of("modules/tags")}
    assert chains == {
        "infra/app": "modules/tags",
        "infra/db": "modules/tags",
        "infra/network": "modules/network-base → modules/tags",
        "modules/network-base": "modules/tags",
    }


# --- explicit selection -----------------------------------------------------------------


def selection_config() -> RepoConfig:
    projects = (
        ProjectConfig(name="app", dir="infra/app"),
        ProjectConfig(name="app-staging", dir="infra/app", workspace="staging"),
        ProjectConfig(name="db", dir="infra/db"),
    )
    return RepoConfig(source="gitops-runner.yaml", projects=projects)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"name": "db"}, ["db"]),
        ({"dir": "./infra/app/"}, ["app", "app-staging"]),
        ({"dir": "infra/app", "workspace": "staging"}, ["app-staging"]),
        ({"workspace": "default"}, ["app", "db"]),
        ({}, ["app", "app-staging", "db"]),
    ],
)
def test_select_projects(kwargs: dict[str, str], expected: list[str]) -> None:
    assert [p.name for p in select_projects(selection_config(), **kwargs)] == expected


def test_select_nothing_is_a_clear_error() -> None:
    with pytest.raises(ProjectSelectionError) as caught:
        select_projects(selection_config(), name="db", workspace="prod")
    assert str(caught.value) == "no project matches -p db -w prod; projects: app, app-staging, db"
    with pytest.raises(ProjectSelectionError, match="escapes the repository"):
        select_projects(selection_config(), dir="../x")


# --- the tree index: a PR re-reads only what it changed -----------------------------------


@pytest.fixture
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """No tree seen before by this process (other tests build graphs of the same trees)."""
    monkeypatch.setattr(modules, "_SKELETONS", modules._BoundedMemo(8))


def _graph_answers(graph: ModuleGraph) -> tuple[object, ...]:
    modules_ = sorted(graph.module_dirs())
    return (
        sorted(graph.terraform_dirs()),
        modules_,
        {module: graph.callers_of(module) for module in modules_},
    )


def test_the_tree_index_follows_a_pr_reading_only_the_files_it_changed(
    sample: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_process: None
) -> None:
    cache = tmp_path / "cache"
    ModuleGraph.build(sample.path, cache_dir=cache)  # main, as the server saw it before
    new_caller = 'module "tags" {\n  source = "../../modules/tags"\n  name = "new"\n}\n'
    changed = open_pr(
        sample,
        write={"infra/new/main.tf": new_caller, **edit(sample, "modules/tags/main.tf")},
        remove=["infra/db/main.tf"],
    )
    read: list[str] = []
    real_sources = modules._text_sources
    monkeypatch.setattr(
        modules, "_text_sources", lambda path, text: read.append(path) or real_sources(path, text)
    )

    indexed = ModuleGraph.build(sample.path, cache_dir=cache)
    again = ModuleGraph.build(sample.path, cache_dir=cache)

    full = ModuleGraph.build(sample.path)  # no cache: the full scan
    assert _graph_answers(indexed) == _graph_answers(full) == _graph_answers(again)
    assert "infra/new" in indexed.terraform_dirs() and "infra/db" not in indexed.terraform_dirs()
    # The PR's .tf files were read once, for the first build; the second loaded the index.
    assert sorted(read) == sorted(
        p for p in changed if p.endswith(".tf") and p != "infra/db/main.tf"
    )


def test_a_damaged_or_foreign_tree_index_means_a_full_scan(sample: GitRepo, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ModuleGraph.build(sample.path, cache_dir=cache)
    (entry,) = (cache / modules.TREE_INDEX_DIR).glob("*.scan")
    entry.write_text('{"format": "tree-scan-v2", "tf_files": "", "sources": ""}'[:20])
    other = tmp_path / "other-repo"
    GitRepo.init(other).write({"x/main.tf": "\n"}).commit("unrelated")
    ModuleGraph.build(other, cache_dir=cache)  # a tree of another repository is stored too
    monkeypatch_memo = modules._BoundedMemo(8)  # as a new process finds it
    modules._SKELETONS = monkeypatch_memo

    files = open_pr(sample, edit(sample, "modules/tags/main.tf"))
    graph = ModuleGraph.build(sample.path, cache_dir=cache)

    assert _graph_answers(graph) == _graph_answers(ModuleGraph.build(sample.path))
    assert reasons(sample, files, cache_dir=cache) == reasons(sample, files)


# --- the lexical pass agrees with python-hcl2 ------------------------------------------------

LEXICAL_CASES = {
    "plain": 'module "a" {\n  source = "../a"\n  name   = "x"\n}\n',
    "identifier label": 'module a {\n  source = "./a"\n}\n',
    "one line": 'module "a" { source = "../a" }\n',
    "interpolated argument": 'module "a" {\n  source = "../a"\n  n = "${var.x}-y"\n}\n',
    "registry source": 'module "a" {\n  source = "hashicorp/x/aws"\n  version = "1.0"\n}\n',
    "nested object": 'module "a" {\n  source = "../a"\n  m = { source = "./no" }\n}\n',
    "resource attribute": 'resource "x" "y" {\n  source = "./no"\n}\n',
    "commented call": '# module "c" {\n#   source = "./no"\n# }\nlocals {\n  a = 1\n}\n',
    "slashes comment": '// source = "./no"\nmodule "a" {\n  source = "./a" // why\n}\n',
    "string with brace": 'locals {\n  a = "{"\n}\nmodule "a" {\n  source = "./a"\n}\n',
    "heredoc": TRICKY_CALLER,
    "interpolated source": 'module "a" {\n  source = "${path.module}/a"\n}\n',
    "escaped quote": 'locals {\n  a = "say \\"hi\\""\n}\nmodule "a" {\n  source = "./a"\n}\n',
    "provider source in a list": 'module "a" {\n  source = "./a"\n  x = [\n    source\n  ]\n}\n',
    "nested quotes in a template": 'locals {\n  a = "${lookup(var.m, "}", "{")}"\n}\n'
    'module "a" {\n  source = "./a"\n}\n',
    "one-line blocks": 'module "a" { source = "./a" }\nmodule "b" {\n  source = "./b"\n}\n',
    "template directive": 'locals {\n  a = "%{ if true }module \\"x\\" {%{ endif }"\n}\n'
    'module "a" {\n  source = "./a"\n}\n',
    "block comment between calls": 'module "a" {\n  source = "./a"\n}\n/* module "b" {\n'
    '  source = "./b"\n} */\nmodule "c" {\n  source = "./c"\n}\n',
    "heredoc with a call inside": 'locals {\n  t = <<EOT\nmodule "x" {\n  source = "./x"\n}\n'
    'EOT\n}\nmodule "a" {\n  source = "./a"\n}\n',
    "bench module": 'variable "name" {}\n\nmodule "inner" {\n  source = "../mod-002"\n'
    "  name   = var.name\n}\n",
}


@pytest.mark.parametrize("case", sorted(LEXICAL_CASES))
def test_the_lexical_pass_finds_the_calls_the_parser_finds(case: str) -> None:
    text = LEXICAL_CASES[case]
    fast = lexical_local_calls(text)
    tree = modules._hcl_parser().parse(text + "\n")
    parsed = tuple(
        (name, src)
        for name, src in (modules._block_label_and_source(b) for b in modules._module_blocks(tree))
        if src and src.startswith(("./", "../"))
    )

    assert fast is None or fast == parsed
    assert modules.parse_hcl_local_calls(text) == parsed


def test_the_lexical_pass_leaves_what_it_does_not_model_to_the_parser() -> None:
    unmodelled = (
        'module "a" {\n  source = "${x}"\n}\n',  # a template: only the parser may judge
        'module "a" {{\n',
        'locals {\n  a = "unterminated\n}\n',
        "locals {\n  a = 1 +\n    2\n}\n",  # continued without brackets
        "locals {\n  doc = <<EOT\n  never closed\n}\n",
    )
    for text in unmodelled:
        assert lexical_local_calls(text) is None, text
    assert lexical_local_calls(LEXICAL_CASES["plain"]) == (("a", "../a"),)
    # Comments, heredocs and nested templates are modelled: no parse needed.
    assert lexical_local_calls(TRICKY_CALLER) == (("real", "../../modules/real/"),)
