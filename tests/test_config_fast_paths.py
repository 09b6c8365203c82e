"""The fast paths of loading a large config keep every answer of the slow ones: projects
validated in bulk report the first bad entry exactly as one-by-one validation did, the
dir shortcut refuses what normpath refuses, the dir probe's memo does not let a symlink
through, and python-hcl2 is imported only by a file that needs it."""

from __future__ import annotations

import itertools
import os
import posixpath
import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runner.config.errors import ConfigError
from runner.config.loader import RUNNER_FILE, load_repo_config
from runner.config.model import check_name, normalize_dir
from runner.terraform import modules
from runner.terraform.modules import ModuleGraph
from tests.support.git_repo import GitRepo

REPO_ROOT = Path(__file__).resolve().parent.parent


def load_error(root: Path, name: str, text: str) -> ConfigError:
    root.mkdir(exist_ok=True)
    (root / name).write_text(textwrap.dedent(text).lstrip("\n"))
    with pytest.raises(ConfigError) as caught:
        load_repo_config(root)
    return caught.value


# --- bulk validation: the first bad entry, as it reads on its own -------------------------


def test_among_thousands_of_entries_the_first_bad_one_is_reported(tmp_path: Path) -> None:
    """An attacker hides a traversal deep in a long list, a second one after it."""
    good = [f"  - dir: stacks/svc-{i}" for i in range(3000)]
    lines = ["version: 1", "projects:", *good]
    lines[2 + 2500] = "  - dir: stacks/../../etc"
    lines[2 + 2700] = "  - dir: /etc"
    error = load_error(tmp_path / "repo", RUNNER_FILE, "\n".join(lines) + "\n")
    assert str(error) == (
        "gitops-runner.yaml:2503: projects[2500].dir: 'stacks/../../etc' escapes the repository"
    )


def test_an_earlier_invalid_entry_wins_over_a_later_malformed_one(tmp_path: Path) -> None:
    """Entries the loader refuses before pydantic (not a mapping) count in their place."""
    error = load_error(
        tmp_path / "repo",
        RUNNER_FILE,
        """
        version: 1
        projects:
          - dir: a
          - dir: b
            workspace: "bad workspace"
          - just a string
        """,
    )
    assert (error.line, error.path) == (5, "projects[1].workspace")
    assert error.reason.startswith("'bad workspace' is not a plain workspace name")


def test_a_malformed_entry_before_an_invalid_one_wins(tmp_path: Path) -> None:
    error = load_error(
        tmp_path / "repo",
        RUNNER_FILE,
        """
        version: 1
        projects:
          - dir: a
          - [not, a, mapping]
          - dir: ../b
        """,
    )
    assert str(error) == "gitops-runner.yaml:4: projects[1]: each project must be a mapping"


def test_a_derived_name_that_is_not_plain_is_still_explained(tmp_path: Path) -> None:
    error = load_error(
        tmp_path / "repo",
        RUNNER_FILE,
        """
        version: 1
        projects:
          - dir: ok
          - dir: "with space"
        """,
    )
    assert str(error) == (
        "gitops-runner.yaml:4: projects[1]: 'with space' (derived from dir/workspace) "
        "is not a plain name; set name"
    )


def test_atlantis_translation_errors_keep_their_order(tmp_path: Path) -> None:
    """atlantis.yaml entries are translated one by one: an invalid earlier entry is
    reported before a later entry without `dir`, and that one before later ones."""
    root = tmp_path / "repo"
    first = load_error(
        root,
        "atlantis.yaml",
        """
        version: 3
        projects:
          - dir: a
            workspace: "-no"
          - name: nodir
        """,
    )
    assert (first.line, first.path) == (4, "projects[0].workspace")
    second = load_error(
        root,
        "atlantis.yaml",
        """
        version: 3
        projects:
          - dir: a
          - name: nodir
          - dir: ../escape
        """,
    )
    assert str(second) == (
        "atlantis.yaml:4: projects[1]: dir is required in atlantis.yaml projects"
    )


def test_bulk_and_one_by_one_give_equal_projects(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    (root / RUNNER_FILE).write_text(
        textwrap.dedent(
            """
            version: 1
            projects:
              - dir: ./a/
                workspace: prod
                depends_on: [b]
                apply_requirements: [approved]
                autoplan: {when_modified: ["*.tf"]}
              - name: b
                dir: b
                drift: {enabled: true}
            """
        ).lstrip("\n")
    )
    config = load_repo_config(root)
    assert [(p.name, p.dir, p.workspace) for p in config.projects] == [
        ("a:prod", "a", "prod"),
        ("b", "b", "default"),
    ]
    assert config.projects[0].autoplan.when_modified == ("*.tf",)
    assert config.projects[1].drift.enabled is True
    assert config.projects[0].model_fields_set == {
        "name", "dir", "workspace", "depends_on", "apply_requirements", "autoplan", "drift",
    }  # fmt: skip


# --- the dir shortcut ------------------------------------------------------------------


def _reference_normalize(value: str) -> str:
    """normalize_dir as it was, before its shortcut for dirs already normal."""
    if "\\" in value or "\0" in value:
        raise ValueError(f"{value!r} must be a POSIX path (no backslashes or NUL)")
    if value.startswith("/"):
        raise ValueError(f"{value!r} is absolute; use a path relative to the repository root")
    normalized = posixpath.normpath(value) if value else "."
    if normalized == ".." or normalized.startswith("../"):
        raise ValueError(f"{value!r} escapes the repository")
    return normalized


def _outcome(fn: object, value: str) -> tuple[str, str]:
    try:
        return ("ok", fn(value))  # type: ignore[operator]
    except ValueError as exc:
        return ("refused", str(exc))


def test_the_dir_shortcut_answers_as_normpath_for_every_short_path() -> None:
    """Every path of up to five pieces among the tricky ones: traversal included."""
    pieces = ["a", "b.c", ".", "..", "...", ".x", "x.", "/", "//", "\\", "\0"]
    for length in range(6):
        for combo in itertools.product(pieces, repeat=length):
            value = "".join(combo)
            assert _outcome(normalize_dir, value) == _outcome(_reference_normalize, value), value


def _reference_check_name(value: str) -> str:
    """check_name as it was written before its two regexes became one."""
    plain = value == "." or (
        len(value) <= 128
        and re.fullmatch(r"(?!-)[A-Za-z0-9_.:@+-]+(?:/[A-Za-z0-9_.:@+-]+)*", value) is not None
        and re.search(r"(?:^|/)\.\.?(?:/|$)", value) is None
    )
    if not plain:
        raise ValueError("not plain")
    return value


def test_the_one_regex_name_check_answers_as_the_two_step_one() -> None:
    """Every name of up to five pieces among the tricky ones (dot segments, leading '-',
    empty segments, spaces), and the length limit."""
    pieces = ["a", "-", ".", "..", "/", "//", " ", ":", "x.", "@+"]
    lengths = ["a" * 128, "a" * 129, "a/" * 63 + "bc", "-" + "a" * 127]
    for length in range(6):
        for value in ["".join(combo) for combo in itertools.product(pieces, repeat=length)]:
            for candidate in (value, *(value + tail for tail in lengths if length < 2)):
                expected = _outcome(_reference_check_name, candidate)[0]
                assert _outcome(check_name, candidate)[0] == expected, candidate


@pytest.mark.parametrize(
    "attack",
    ["..", "../x", "a/../..", "a/../../x", "./../x", "a/b/../../../c", "/etc", "a\\..\\.."],
)
def test_traversal_never_takes_the_shortcut(attack: str) -> None:
    with pytest.raises(ValueError):
        normalize_dir(attack)


# --- the dir probe's memo ----------------------------------------------------------------


def test_a_symlink_beside_plain_siblings_is_still_refused(tmp_path: Path) -> None:
    """Siblings already probed make the parent known as plain; the link next to them
    must still be resolved, not assumed to be a directory."""
    root, outside = tmp_path / "repo", tmp_path / "outside"
    outside.mkdir()
    for name in ("one", "two"):
        (root / "stacks" / name).mkdir(parents=True)
    (root / "stacks" / "evil").symlink_to(outside)
    error = load_error(
        root,
        RUNNER_FILE,
        """
        version: 1
        projects:
          - dir: stacks/one
          - dir: stacks/two
          - dir: stacks/evil
        """,
    )
    assert (error.line, error.path) == (5, "projects[2].dir")
    assert error.reason == "'stacks/evil' escapes the repository through a symlink"


def test_a_symlinked_parent_is_resolved_for_every_child(tmp_path: Path) -> None:
    root, outside = tmp_path / "repo", tmp_path / "outside"
    (outside / "x").mkdir(parents=True)
    (root / "real").mkdir(parents=True)
    (root / "link").symlink_to(outside)
    error = load_error(
        root,
        RUNNER_FILE,
        """
        version: 1
        projects:
          - dir: real
          - dir: link/x
        """,
    )
    assert error.reason == "'link/x' escapes the repository through a symlink"


def test_missing_dirs_below_a_plain_parent_are_warned(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    (root / "stacks" / "one").mkdir(parents=True)
    (root / "stacks" / "file").write_text("not a dir")
    (root / RUNNER_FILE).write_text(
        "version: 1\nprojects:\n  - dir: stacks/one\n  - dir: stacks/two\n  - dir: stacks/file\n"
    )
    warnings = load_repo_config(root).warnings
    assert [(w.line, w.message) for w in warnings] == [
        (4, "projects[1].dir: 'stacks/two' does not exist"),
        (5, "projects[2].dir: 'stacks/file' does not exist"),
    ]


# --- python-hcl2 only when needed --------------------------------------------------------


def test_the_mapping_modules_do_not_import_python_hcl2() -> None:
    """A real new process: importing what change detection uses loads no lark grammar."""
    code = (
        "import sys, runner.config.loader, runner.projects.detection, runner.terraform.modules\n"
        "print(sorted(m for m in ('hcl2', 'lark') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_parse_cache_is_still_kept_per_python_hcl2_version() -> None:
    import hcl2

    assert modules._cache_namespace() == f"module-calls-v1-hcl2-{hcl2.__version__}"


def test_a_file_the_token_pass_is_unsure_of_is_parsed_by_python_hcl2() -> None:
    text = 'module "a" {\n  source = "./x${var.v}"\n}\nmodule "b" {\n  source = "../y"\n}\n'
    assert modules.lexical_local_calls(text) is None
    assert modules.parse_hcl_local_calls(text) == (("b", "../y"),)


# --- module calls confirmed in one transaction --------------------------------------------


def _monorepo(path: Path, callers: int) -> GitRepo:
    repo = GitRepo.init(path)
    files = {"modules/tags/main.tf": 'variable "name" {}\n'}
    for i in range(callers):
        # Each file its own content: one parse entry each.
        files[f"stacks/s{i}/main.tf"] = f'module "t{i}" {{\n  source = "../../modules/tags"\n}}\n'
    repo.write(files).commit("monorepo")
    return repo


def test_calls_confirmed_in_one_batch_are_all_kept_for_the_next_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, cache_dir = _monorepo(tmp_path / "repo", 30), tmp_path / "cache"
    monkeypatch.setattr(modules, "_SKELETONS", modules._BoundedMemo(8))
    monkeypatch.setattr(modules, "_PARSED", modules._BoundedMemo(1000))
    first = ModuleGraph.build(repo.path, cache_dir=cache_dir).callers_of("modules/tags")
    assert len(first) == 30

    # A new process: nothing in memory, and parsing is not allowed: the disk has it all.
    monkeypatch.setattr(modules, "_SKELETONS", modules._BoundedMemo(8))
    monkeypatch.setattr(modules, "_PARSED", modules._BoundedMemo(1000))

    def no_parse(path: str, data: bytes) -> dict:
        raise AssertionError(f"{path} parsed again")

    monkeypatch.setattr(modules, "_parse_entry", no_parse)
    again = ModuleGraph.build(repo.path, cache_dir=cache_dir).callers_of("modules/tags")
    assert again == first


def test_a_batch_that_fails_keeps_what_it_put_and_leaves_the_cache_writable(
    tmp_path: Path,
) -> None:
    """Another process must not wait on a transaction a failed detection left open."""
    cache = modules._ParseCache(tmp_path)
    with pytest.raises(RuntimeError), cache.batch():
        cache.put("a" * 40, {"calls": []})
        raise RuntimeError("detection failed")
    other = sqlite3.connect(tmp_path / f"{modules._cache_namespace()}.sqlite3", timeout=0)
    other.execute("INSERT INTO calls (sha, entry) VALUES ('b', '{}')")
    other.commit()
    assert other.execute("SELECT entry FROM calls WHERE sha = ?", ("a" * 40,)).fetchone()
