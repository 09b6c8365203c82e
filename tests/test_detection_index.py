"""The detection index (tree_index.py, modules.py): kept by tree id, trusted only for what
git's object ids prove, and giving the same answers as a full scan of a clean checkout.

A pull request's code runs in its checkout (Terraform's external data sources, workflow
steps), so it may rewrite files there before the next detection on that tree; nothing it
writes may reach an index entry or a memo another checkout could load.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
    monkeypatch.setattr(modules, "_SKELETONS", modules._BoundedMemo(8))
    monkeypatch.setattr(modules, "_PARSED", modules._BoundedMemo(1000))
    yield


def new_process() -> None:
    modules._SKELETONS = modules._BoundedMemo(8)
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


def _link_to_a_file_outside(target: Path, outside: Path) -> None:
    outside.write_text('module "x" {\n  source = "../../modules/secret"\n}\n')
    target.symlink_to(outside)


def _fifo(target: Path, _outside: Path) -> None:
    os.mkfifo(target)


def assert_same_skeleton(skeleton: Any, full: Any) -> None:
    """A derived (or stored and loaded) skeleton holds what a full scan finds."""
    assert skeleton.scan.tf_files == full.scan.tf_files
    assert dict(skeleton.scan.candidate_sources) == dict(full.scan.candidate_sources)
    assert dict(skeleton.scan.blobs) == dict(full.scan.blobs)
    assert skeleton.tf_dirs == full.tf_dirs
    assert dict(skeleton.candidate_callers) == dict(full.candidate_callers)
    assert dict(skeleton.files_in_dir) == dict(full.files_in_dir)
    assert skeleton.json_files == full.json_files


@pytest.mark.parametrize("plant", [_link_to_a_file_outside, _fifo], ids=["link", "fifo"])
def test_a_link_or_fifo_put_over_a_tracked_file_is_neither_followed_nor_waited_on(
    sample: GitRepo, tmp_path: Path, plant: Callable[[Path, Path], None]
) -> None:
    """A link is not followed; a FIFO (opening it for reading would wait for a writer)
    is opened non-blocking and found not regular: the blob is read from git instead."""
    expected = clean_answers(sample, tmp_path)
    target = sample.path / "infra/db/main.tf"
    target.unlink()
    plant(target, tmp_path / "secret.tf")
    new_process()

    graph = ModuleGraph.build(sample.path, cache_dir=tmp_path / "cache")

    assert answers(graph) == expected
    assert graph.problems == []


def test_a_fifo_behind_a_tracked_link_or_outside_git_is_not_waited_on(
    sample: GitRepo, tmp_path: Path
) -> None:
    """A file without a blob id (a tracked symlink, or any file outside git) is read from
    the checkout: a FIFO put where it points is opened non-blocking and found not
    regular (a `.tf.json` link is read by every graph: its calls need a parse)."""
    sample.write({"infra/calls.json": json.dumps({"module": {"t": {"source": "../modules/tags"}}})})
    (sample.path / "infra/link.tf.json").symlink_to("calls.json")
    sample.commit("a linked JSON caller")
    (sample.path / "infra/calls.json").unlink()
    os.mkfifo(sample.path / "infra/calls.json")
    new_process()

    graph = ModuleGraph.build(sample.path, cache_dir=tmp_path / "cache")

    assert graph.modules_called_by("infra") == ()
    plain = tmp_path / "plain"
    (plain / "app").mkdir(parents=True)
    os.mkfifo(plain / "app/main.tf")
    assert ModuleGraph.build(plain).modules_called_by("app") == ()


def test_changed_files_replaced_in_the_checkout_are_read_from_git(
    sample: GitRepo, tmp_path: Path
) -> None:
    """A new process derives a PR's scan from main's entry, reading the changed files
    from the checkout only where they still hold the committed blob: one rewritten, one
    made a link to a file outside and one a FIFO are read from git, without waiting."""
    cache = tmp_path / "cache"
    ModuleGraph.build(sample.path, cache_dir=cache)
    sample.branch("pr").checkout("pr")
    push(sample, {"infra/new/main.tf": CALLER, "infra/two/main.tf": CALLER, "x/main.tf": CALLER})
    expected = clean_answers(sample, tmp_path)
    (sample.path / "infra/new/main.tf").write_text('resource "terraform_data" "x" {}\n')
    outside = tmp_path / "outside.tf"
    outside.write_text('module "x" {\n  source = "../../modules/secret"\n}\n')
    (sample.path / "infra/two/main.tf").unlink()
    (sample.path / "infra/two/main.tf").symlink_to(outside)
    (sample.path / "x/main.tf").unlink()
    os.mkfifo(sample.path / "x/main.tf")
    new_process()

    graph = ModuleGraph.build(sample.path, cache_dir=cache)

    assert answers(graph) == expected
    new_process()  # and the entry stored for the PR's tree says the same
    clone = sample.clone(tmp_path / "clone")
    clone.checkout(sample.head)
    assert answers(ModuleGraph.build(clone.path, cache_dir=cache)) == expected


def only_entry(cache: Path) -> Path:
    (entry,) = (cache / modules.TREE_INDEX_DIR).glob(f"*{tree_index.SUFFIX}")
    return entry


def without_app_calls(entry: bytes) -> bytes:
    """The entry with the rows of infra/app's files taken out of its sources field, the
    lengths in its header made to match: only the checksum can tell."""
    header, _, body = entry.partition(b"\n")
    name, digest, *lengths = header.decode().split(" ")
    text = body.decode()
    fields, start = [], 0
    for length in map(int, lengths[:-1]):
        fields.append(text[start : start + length])
        start += length
    fields[2] = "\n".join(r for r in fields[2].split("\n") if not r.startswith("infra/app/"))
    sizes = " ".join(str(len(f)) for f in fields)
    return f"{name} {digest} {sizes} {lengths[-1]}\n{''.join(fields)}".encode()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: data.partition(b"\n")[2], id="no header"),
        pytest.param(lambda data: data.replace(b"infra/app", b"infra/ap\xff", 1), id="bit flip"),
        pytest.param(lambda data: data.replace(b" ", b"  ", 1), id="header spacing"),
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(lambda data: b'{"format": "tree-scan-v3", "tf_files": ""}', id="v3 JSON"),
        pytest.param(without_app_calls, id="checksum fails"),  # well formed, rows removed
    ],
)
def test_a_damaged_entry_is_ignored_and_the_tree_scanned_again(
    sample: GitRepo, tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    cache = tmp_path / "cache"
    ModuleGraph.build(sample.path, cache_dir=cache)
    entry = only_entry(cache)
    entry.write_bytes(damage(entry.read_bytes()))
    new_process()

    assert answers(ModuleGraph.build(sample.path, cache_dir=cache)) == clean_answers(
        sample, tmp_path
    )
    assert only_entry(cache).read_bytes().startswith(tree_index.FORMAT.encode())  # rewritten


@pytest.mark.parametrize(
    "entry",
    [{"calls": [["tags"]]}, {"calls": 5}, {"calls": [[1, 2]]}, {"error": 1}, {"calls": None}],
    ids=["short call", "not a list", "not strings", "error not text", "null"],
)
def test_a_damaged_parse_entry_is_parsed_again(
    sample: GitRepo, tmp_path: Path, entry: dict[str, object]
) -> None:
    """An entry of the module-call cache that is JSON but not of the shape a parse gives
    is a miss, as a damaged one is: never trusted, never an error."""
    cache = tmp_path / "cache"
    expected = answers(ModuleGraph.build(sample.path, cache_dir=cache))
    (db_file,) = cache.glob("*.sqlite3")
    with contextlib.closing(sqlite3.connect(db_file)) as db, db:
        db.execute("UPDATE calls SET entry = ?", (json.dumps(entry),))
    new_process()

    assert answers(ModuleGraph.build(sample.path, cache_dir=cache)) == expected


def test_an_entry_misfiled_under_another_tree_is_not_loaded(
    sample: GitRepo, tmp_path: Path
) -> None:
    """An entry is checked against the tree id it is loaded for: another tree's entry
    renamed (or copied) to this tree's name is refused, even with its checksum intact."""
    other = GitRepo.init(tmp_path / "other")
    other.write({"x/main.tf": CALLER, "modules/tags/main.tf": "\n"}).commit("unrelated")
    cache = tmp_path / "cache"
    ModuleGraph.build(other.path, cache_dir=cache)
    foreign = only_entry(cache)
    tree = tree_index.index_tree(sample.path)
    assert tree is not None
    foreign.rename(foreign.with_name(f"{tree}{tree_index.SUFFIX}"))
    new_process()

    assert tree_index.TreeIndex(cache / modules.TREE_INDEX_DIR).load(tree) is None
    assert answers(ModuleGraph.build(sample.path, cache_dir=cache)) == clean_answers(
        sample, tmp_path
    )


def test_a_planted_entry_that_contradicts_itself_is_refused(
    sample: GitRepo, tmp_path: Path
) -> None:
    """Whoever plants an entry can compute its checksum (it finds damage, not forgery);
    an entry whose own fields disagree (a blob id per file, lengths adding up) is still
    refused, so a planted entry can only say what a real scan could."""
    cache = tmp_path / "cache"
    tree = tree_index.index_tree(sample.path)
    assert tree is not None
    index = tree_index.TreeIndex(cache / modules.TREE_INDEX_DIR)
    scan = tree_index.TreeScan(("a/main.tf", "b/main.tf"), {}, {"a/main.tf": "1" * 40})
    index.store(tree, scan)
    assert index.load(tree) == scan  # a well-formed entry loads
    planted = [
        # one blob id for two files
        ("a/main.tf\0b/main.tf", "1" * 40, "", "-"),
        # lengths that do not add up to the body
        None,
    ]
    for fields in planted:
        if fields is None:
            body = b"a/main.tf"
            lengths = "3 0 0 0 -"
        else:
            *texts, flag = fields
            body = "".join(texts).encode()
            lengths = " ".join(str(len(t)) for t in texts) + f" {flag}"
        digest = tree_index._digest(tree, lengths, body)
        only_entry(cache).write_bytes(f"{tree_index.FORMAT} {digest} {lengths}\n".encode() + body)
        assert index.load(tree) is None
    new_process()
    assert answers(ModuleGraph.build(sample.path, cache_dir=cache)) == clean_answers(
        sample, tmp_path
    )


def test_a_pr_in_a_new_process_is_derived_from_the_stored_base_and_equals_a_full_scan(
    sample: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cold: a new process, main's entry on disk. The PR's tree is main's brought
    through the diff (only the changed files read), its candidate edges taken from
    main's entry and edited; then stored, edges included, for the next process."""
    cache = tmp_path / "cache"
    ModuleGraph.build(sample.path, cache_dir=cache)
    sample.branch("pr").checkout("pr")
    push(
        sample,
        {"infra/new/main.tf": CALLER, "modules/network-base/main.tf": "# calls nothing\n"},
        remove=("infra/db",),
    )
    new_process()
    read: list[str] = []
    real_sources = modules._text_sources
    monkeypatch.setattr(
        modules, "_text_sources", lambda path, text: read.append(path) or real_sources(path, text)
    )

    derived = ModuleGraph.build(sample.path, cache_dir=cache)

    assert sorted(read) == ["infra/new/main.tf", "modules/network-base/main.tf"]
    full = modules._Skeleton.of(modules._scan_git(sample.path))
    for skeleton in (derived._skeleton, modules._Skeleton.of_stored(full.stored())):
        assert_same_skeleton(skeleton, full)
    assert answers(derived) == clean_answers(sample, tmp_path)
    tree = tree_index.index_tree(sample.path)
    assert tree is not None
    stored = tree_index.TreeIndex(cache / modules.TREE_INDEX_DIR).load(tree)
    assert stored is not None and stored.callers == full.candidate_callers
    new_process()
    assert answers(ModuleGraph.build(sample.path, cache_dir=cache)) == answers(derived)


def test_entries_of_other_repositories_are_used_only_for_trees_this_one_holds(
    sample: GitRepo, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    other = GitRepo.init(tmp_path / "other")
    other.write({"x/main.tf": CALLER, "modules/tags/main.tf": "\n"}).commit("unrelated")
    ModuleGraph.build(other.path, cache_dir=cache)  # the most recent entry: not this repo's
    index = tree_index.TreeIndex(cache / modules.TREE_INDEX_DIR)
    assert tree_index._newest_present(sample.path, index.trees()) is None
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
    real_load = tree_index.TreeIndex.load

    def counted_load(index: tree_index.TreeIndex, tree: str) -> tree_index.TreeScan | None:
        loads.append(tree)
        return real_load(index, tree)

    monkeypatch.setattr(tree_index.TreeIndex, "load", counted_load)
    derived = ModuleGraph.build(sample.path, cache_dir=cache)
    assert loads == []  # nothing read from disk: derived from main's skeleton

    full = modules._Skeleton.of(modules._scan_git(sample.path))
    assert_same_skeleton(derived._skeleton, full)
    assert answers(derived) == clean_answers(sample, tmp_path)
    # Stored for the other processes, and equal to what they would scan.
    new_process()
    assert answers(ModuleGraph.build(sample.path, cache_dir=cache)) == answers(derived)


def test_a_kept_tree_of_another_repository_is_passed_over_for_one_of_this(
    sample: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The newest skeleton this process keeps is another repository's: git refuses that
    diff, and the next commit is derived from the older skeleton of its own base."""
    cache = tmp_path / "cache"
    ModuleGraph.build(sample.path, cache_dir=cache)
    other = GitRepo.init(tmp_path / "other")
    other.write({"x/main.tf": CALLER, "modules/tags/main.tf": "\n"}).commit("unrelated")
    ModuleGraph.build(other.path, cache_dir=cache)
    push(sample, {"infra/new/main.tf": CALLER})
    monkeypatch.setattr(tree_index.TreeIndex, "load", lambda *_: pytest.fail("loaded"))

    derived = ModuleGraph.build(sample.path, cache_dir=cache)

    assert_same_skeleton(derived._skeleton, modules._Skeleton.of(modules._scan_git(sample.path)))
    assert answers(derived) == clean_answers(sample, tmp_path)


def test_the_bounded_memo_keeps_the_entries_put_most_recently() -> None:
    memo = modules._BoundedMemo(3)
    for key, value in [("a", 1), ("b", 2), ("c", 3), ("a", 4), ("d", 5)]:
        memo[key] = value
    assert memo == {"c": 3, "a": 4, "d": 5}  # "b" the oldest put: dropped
    assert memo.newest_first() == [("d", 5), ("a", 4), ("c", 3)]


def test_discovery_is_kept_for_the_tree(sample: GitRepo, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = discover(ModuleGraph.build(sample.path, cache_dir=cache))
    assert discover(ModuleGraph.build(sample.path, cache_dir=cache)) is first
    sample.write({"infra/new/main.tf": CALLER}).commit("a new project")
    after = discover(ModuleGraph.build(sample.path, cache_dir=cache))
    assert [p.name for p in after.projects] == [*(p.name for p in first.projects), "infra/new"]
    # Without a cache dir (a plain scan) nothing is kept.
    assert discover(ModuleGraph.build(sample.path)) is not discover(ModuleGraph.build(sample.path))


def test_a_dir_keeps_its_place_while_it_holds_a_file_directly() -> None:
    """`_holds_a_file`, which the derived skeleton asks for each dir a change emptied,
    against the plain answer on neighbours that sort around the dir's subtree."""
    files = tuple(
        sorted(["a-b/x.tf", "a.tf", "a/b/c.tf", "a/b.tf/d.tf", "ab/x.tf", "b/a/x.tf", "top.tf"])
    )
    for dir in (".", "a", "a/b", "a/b.tf", "ab", "b", "b/a", "c"):
        plain = any(modules.dir_of(path) == dir for path in files)
        assert modules._holds_a_file(files, dir) == plain, dir
    assert not modules._holds_a_file(("a/x.tf",), ".")
