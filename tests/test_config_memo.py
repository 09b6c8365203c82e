"""Loading a config file fast without changing what it means: the parse kept by the file's
text, the one-walk YAML path for plain documents, and the disk consulted on every load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from runner.config import loader
from runner.config.errors import ConfigError
from runner.config.loader import RUNNER_FILE, load_repo_config
from runner.projects.changes import ChangeDetectionError, changed_files
from tests.support.git_repo import GitRepo, sample_files

CONFIG = """\
version: 1
projects:
  - dir: infra/app
  - dir: infra/db
    apply_requirements: [approved]
    autoplan:
      when_modified: ["*.tf", "../../modules/**/*.tf"]
"""


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    repo = GitRepo.init(tmp_path / "repo")
    repo.write(sample_files()).write({RUNNER_FILE: CONFIG}).commit("config")
    return repo


def test_an_unchanged_file_is_parsed_once(repo: GitRepo) -> None:
    loader._parsed.cache_clear()
    first = load_repo_config(repo.path)
    second = load_repo_config(repo.path)
    assert loader._parsed.cache_info().hits == 1
    assert first == second
    assert first.projects[0] is second.projects[0]  # frozen, so shared

    repo.write({RUNNER_FILE: CONFIG + "  - dir: infra/network\n"})
    assert [p.name for p in load_repo_config(repo.path).projects][-1] == "infra/network"
    assert loader._parsed.cache_info().misses == 2


def test_a_large_file_is_not_kept(repo: GitRepo, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a pull request can make the process hold stays bounded."""
    monkeypatch.setattr(loader, "MAX_KEPT_CONFIG_CHARS", len(CONFIG) - 1)
    loader._parsed.cache_clear()
    assert load_repo_config(repo.path) == load_repo_config(repo.path)
    assert loader._parsed.cache_info().currsize == 0


def test_the_checkout_is_looked_at_on_every_load(repo: GitRepo, tmp_path: Path) -> None:
    """The parse is kept; what the project dirs are on disk is not: planning a PR runs
    its code in the checkout, which may plant a link there before the next load."""
    assert load_repo_config(repo.path).warnings == ()
    outside = tmp_path / "outside"
    outside.mkdir()
    app = repo.path / "infra/app"
    for child in app.iterdir():
        child.unlink()
    app.rmdir()
    app.symlink_to(outside)

    with pytest.raises(ConfigError) as caught:
        load_repo_config(repo.path)
    assert caught.value.line == 3
    assert "escapes the repository through a symlink" in caught.value.reason


def test_a_broken_file_fails_the_same_way_every_time(repo: GitRepo) -> None:
    repo.write({RUNNER_FILE: CONFIG + "  - dir: ../outside\n"})
    errors = []
    for _ in range(2):
        with pytest.raises(ConfigError) as caught:
            load_repo_config(repo.path)
        errors.append(str(caught.value))
    assert errors[0] == errors[1]
    assert errors[0].startswith("gitops-runner.yaml:8: projects[2].dir:")


# --- the one-walk YAML path gives what the general path gives ---------------------------

PLAIN = {
    "config": CONFIG,
    "scalars": "a: 1\nb: true\nc: ~\nd: 1.5\ne: '1'\nf: !!str 2\ng: 0x1f\nh: .inf\n",
    "keys that are not strings": "1: a\ntrue: b\nnull: c\n01: d\n",
    "nested": "a:\n  - [1, 2, {b: [c, d]}]\n  - {}\n  - []\nz: |\n  text\n",
    "flow and block": "{a: [1, 2], b: {c: d}}\n",
    "a quoted << is a plain key": "'<<': a\nb: {'<<': c}\n",
    "explicit plain tags": "a: !!int '7'\nb: !!null ''\nc: ! 12\n",
}
GENERAL_ONLY = {
    "merge key": "a: &x {k: v}\nb:\n  <<: *x\n  l: w\n",
    "duplicate key": "a: 1\na: 2\n",
    "timestamp": "a: 2001-12-14\n",
    "set": "a: !!set {x, y}\n",
    "bad int": "a: !!int nope\n",
    "mapping as key": "? [a, b]\n: c\n",
    "deep": "a: " + "[" * 80 + "]" * 80 + "\n",
    "aliases": "a: &x [1, 2]\nb: *x\nc: &y {k: v}\nd: [*y, *y]\n",
    "two documents": "a: 1\n---\nb: 2\n",
    "invalid": "a: [1, 2\n",
}


def general(text: str) -> tuple[Any, dict[Any, int]]:
    node = loader._SafeLoader(text).get_single_node()
    data = loader._freeze(loader._SafeLoader(text).get_single_data())
    return data, loader._line_map("f", node)


@pytest.mark.parametrize("case", sorted(PLAIN))
def test_plain_documents_take_one_walk_to_the_same_result(case: str) -> None:
    text = PLAIN[case]
    doc = loader._plain_document("f", text)
    assert doc is not None
    assert (doc.data, doc.lines) == general(text)


@pytest.mark.parametrize("case", sorted(PLAIN))
def test_without_libyaml_plain_documents_read_the_same(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """libyaml is optional (PyYAML falls back to its pure-Python parser): same result."""
    expected = general(PLAIN[case])
    monkeypatch.setattr(loader, "_SafeLoader", yaml.SafeLoader)
    doc = loader._plain_document("f", PLAIN[case])
    assert doc is not None
    assert (doc.data, doc.lines) == expected


@pytest.mark.parametrize("case", sorted(GENERAL_ONLY))
def test_anything_else_is_left_to_the_general_path(case: str) -> None:
    text = GENERAL_ONLY[case]
    assert loader._plain_document("f", text) is None


def test_errors_of_the_general_path_are_unchanged(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / RUNNER_FILE).write_text("version: 1\nprojects:\n  - dir: a\n    dir: b\n")
    with pytest.raises(ConfigError) as caught:
        load_repo_config(root)
    assert (caught.value.line, caught.value.reason) == (4, "duplicate key 'dir'")


def test_changed_files_refuses_revisions_that_look_like_options(repo: GitRepo) -> None:
    with pytest.raises(ChangeDetectionError, match="bad revision"):
        changed_files(repo.path, "main", "--output=/tmp/x")
