"""The detection index (tree_index.py, modules.py): kept by tree id, trusted only for what
git's object ids prove, and giving the same answers as a full scan of a clean checkout.

A pull request's code runs in its checkout (Terraform's external data sources, workflow
steps), so it may rewrite files there before the next detection on that tree; nothing it
writes may reach an index entry or a memo another checkout could load.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.config.discovery import discover
from runner.terraform import modules, tree_index
from runner.terraform.modules import ModuleGraph
from tests.support.git_repo import GitRepo, sample_repo

CALLER = 'module "tags" {\n  source = "../../modules/tags"\n  name = "x"\n}\n'


@pytest.fixture
def sample(tmp_path: Path) -> GitRepo:
    return sample_repo(tmp_path / "repo")


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No tree and no file content seen before by this process."""
    monkeypatch.setattr(modules, "_SKELETONS", modules._SkeletonMemo(8))
    monkeypatch.setattr(modules, "_PARSED", modules._BoundedMemo(1000))
    yield


def new_process() -> None:
    modules._SKELETONS = modules._SkeletonMemo(8)
    modules._PARSED.clear()


def answers(graph: ModuleGraph) -> tuple[object, ...]:
    module_dirs = sorted(graph.module_dirs())
    return (
        sorted(graph.terraform_dirs()),
        module_dirs,
        {module: graph.callers_of(module) for module in module_dirs},
        {d: graph.modules_called_by(d) for d in sorted(graph.terraform_dirs())},
    )


def clean_answers(repo: GitRepo, tmp_path: Path, ref: str = "HEAD") -> tuple[object, ...]:
    """What a full scan of a fresh clone at `ref` answers (no cache, no memo)."""
    clone = repo.clone(tmp_path / f"clean-{len(list(tmp_path.iterdir()))}")
    clone.checkout(repo.repo.git.rev_parse(ref))
    return answers(ModuleGraph.build(clone.path))


def push(repo: GitRepo, files: dict[str, str], remove: tuple[str, ...] = ()) -> None:
    repo.write(files).remove(remove).commit("push")


def test_a_rewritten_work_tree_reaches_neither_the_index_nor_the_answers(
    sample: GitRepo, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    ModuleGraph.build(sample.path, cache_dir=cache)  # main, as the server saw it
    sample.branch("pr").checkout("pr")
    edited = (sample.path / "infra/app/main.tf").read_text() + "# edited\n"
    push(sample, {"infra/app/main.tf": edited, "infra/new/main.tf": CALLER})
    expected = clean_answers(sample, tmp_path)
    # What planning the PR could leave behind: its changed files rewritten, calls dropped.
    for rel in ("infra/app/main.tf", "infra/new/main.tf", "infra/db/main.tf"):
        (sample.path / rel).write_text('resource "terraform_data" "x" {}\n')
    new_process()

    assert answers(ModuleGraph.build(sample.path, cache_dir=cache)) == expected
    # The stored entry is the tree's, whoever loads it next.
    new_process()
    clone = sample.clone(tmp_path / "clone")
    clone.checkout(sample.head)
    assert answers(ModuleGraph.build(clone.path, cache_dir=cache)) == expected


def test_a_link_put_over_a_tracked_file_is_not_followed(sample: GitRepo, tmp_path: Path) -> None:
    secret = tmp_path / "secret.tf"
    secret.write_text('module "x" {\n  source = "../../modules/secret"\n}\n')
    expected = clean_answers(sample, tmp_path)
    target = sample.path / "infra/db/main.tf"
    target.unlink()
    target.symlink_to(secret)
    new_process()

    graph = ModuleGraph.build(sample.path, cache_dir=tmp_path / "cache")

    assert answers(graph) == expected
    assert graph.problems == []


def test_an_entry_whose_checksum_fails_is_not_loaded(sample: GitRepo, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    ModuleGraph.build(sample.path, cache_dir=cache)
    (entry,) = (cache / modules.TREE_INDEX_DIR).glob("*.json")
    document = json.loads(entry.read_text())
    # Valid JSON, right format, one call taken out: only the checksum tells.
    document["sources"] = "\n".join(
        row for row in document["sources"].split("\n") if not row.startswith("infra/app/")
    )
    entry.write_text(json.dumps(document))
    new_process()

    assert answers(ModuleGraph.build(sample.path, cache_dir=cache)) == clean_answers(
        sample, tmp_path
    )


def test_entries_of_other_repositories_are_used_only_for_trees_this_one_holds(
    sample: GitRepo, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    other = GitRepo.init(tmp_path / "other")
    other.write({"x/main.tf": CALLER, "modules/tags/main.tf": "\n"}).commit("unrelated")
    ModuleGraph.build(other.path, cache_dir=cache)  # the most recent entry: not this repo's
    index = tree_index.TreeIndex(cache / modules.TREE_INDEX_DIR)
    assert tree_index._newest_present(sample.path, index._recent()) is None
    new_process()

    assert answers(ModuleGraph.build(sample.path, cache_dir=cache)) == clean_answers(
        sample, tmp_path
    )
    # A clone holds the same trees: the entry is exact for it (tree ids name content).
    clone = sample.clone(tmp_path / "clone")
    new_process()
    assert answers(ModuleGraph.build(clone.path, cache_dir=cache)) == answers(
        ModuleGraph.build(sample.path)
    )


def test_the_next_commit_is_derived_in_memory_and_equals_a_full_scan(
    sample: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    base = ModuleGraph.build(sample.path, cache_dir=cache)
    base.callers_of("modules/tags")  # confirmed calls that the next commit keeps
    sample.branch("pr").checkout("pr")
    push(
        sample,
        {
            "infra/new/main.tf": CALLER,  # a new caller in a new directory
            "infra/json/main.tf.json": json.dumps(
                {"module": {"t": {"source": "../../modules/network-base"}}}
            ),
            "modules/network-base/main.tf": "# emptied: calls nothing now\n",
        },
        remove=("infra/db",),  # a caller and its directory gone
    )
    sample.rename("infra/app/variables.tf", "infra/app2/variables.tf").commit("move")
    loads: list[str] = []
    real_load = tree_index.TreeIndex._load

    def counted_load(index: tree_index.TreeIndex, tree: str) -> tree_index.TreeScan | None:
        loads.append(tree)
        return real_load(index, tree)

    monkeypatch.setattr(tree_index.TreeIndex, "_load", counted_load)
    derived = ModuleGraph.build(sample.path, cache_dir=cache)
    assert loads == []  # nothing read from disk: derived from main's skeleton

    full = modules._Skeleton.of(modules._scan_git(sample.path))
    skeleton = derived._skeleton
    assert skeleton.scan.tf_files == full.scan.tf_files
    assert skeleton.scan.candidate_sources == full.scan.candidate_sources
    assert dict(skeleton.scan.blobs) == dict(full.scan.blobs)
    assert skeleton.tf_dirs == full.tf_dirs
    assert dict(skeleton.candidate_callers) == dict(full.candidate_callers)
    assert dict(skeleton.files_in_dir) == dict(full.files_in_dir)
    assert skeleton.json_files == full.json_files
    assert answers(derived) == clean_answers(sample, tmp_path)
    # Stored for the other processes, and equal to what they would scan.
    new_process()
    assert answers(ModuleGraph.build(sample.path, cache_dir=cache)) == answers(derived)


def test_discovery_is_kept_for_the_tree(sample: GitRepo, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = discover(ModuleGraph.build(sample.path, cache_dir=cache))
    assert discover(ModuleGraph.build(sample.path, cache_dir=cache)) is first
    sample.write({"infra/new/main.tf": CALLER}).commit("a new project")
    after = discover(ModuleGraph.build(sample.path, cache_dir=cache))
    assert [p.name for p in after.projects] == [*(p.name for p in first.projects), "infra/new"]
    # Without a cache dir (a plain scan) nothing is kept.
    assert discover(ModuleGraph.build(sample.path)) is not discover(ModuleGraph.build(sample.path))
