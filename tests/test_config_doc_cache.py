"""The parsed config file kept on disk (config/doc_cache.py): a new process skips the
YAML, and nothing planted, damaged or misfiled in the cache dir changes what a config
means or lets an invalid project through."""

from __future__ import annotations

import hashlib
import json
import textwrap
from pathlib import Path

import pytest

from runner.config import doc_cache, loader
from runner.config.doc_cache import CACHE_SUBDIR, DocCache, text_key
from runner.config.errors import ConfigError
from runner.config.loader import RUNNER_FILE, load_repo_config
from runner.config.model import RepoConfig
from runner.terraform.modules import ModuleGraph
from tests.support.git_repo import GitRepo, sample_files

CONFIG = textwrap.dedent(
    """\
    version: 1
    projects:
      - dir: infra/app
      - dir: infra/db
        apply_requirements: [approved]
      - dir: infra/gone
    """
)


@pytest.fixture
def repo(tmp_path: Path) -> GitRepo:
    repo = GitRepo.init(tmp_path / "repo")
    repo.write(sample_files()).write({RUNNER_FILE: CONFIG}).commit("config")
    return repo


def load_in_new_process(root: Path, cache_dir: Path) -> RepoConfig:
    """What a new process does: nothing kept in memory, the same cache dir."""
    loader._parsed.cache_clear()
    return load_repo_config(root, graph=ModuleGraph.build(root, cache_dir=cache_dir))


def entry_path(cache_dir: Path, text: str) -> Path:
    return cache_dir / CACHE_SUBDIR / f"{text_key(text)}.json"


def planted(key: str, data: object) -> bytes:
    """An entry written the way the cache writes one: a valid checksum."""
    payload = json.dumps({"format": doc_cache._FORMAT, "key": key, "data": data}).encode()
    return hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


def test_a_new_process_reads_the_kept_document_instead_of_the_yaml(
    repo: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_dir = tmp_path / "cache"
    first = load_in_new_process(repo.path, cache_dir)
    assert entry_path(cache_dir, CONFIG).is_file()

    parses: list[str] = []
    real_read_yaml = loader._read_yaml

    def counting_read_yaml(name: str, text: str) -> loader._Document:
        parses.append(name)
        return real_read_yaml(name, text)

    monkeypatch.setattr(loader, "_read_yaml", counting_read_yaml)
    second = load_in_new_process(repo.path, cache_dir)
    assert second == first
    # The warning about the missing dir needs its line: the text is read for it, once.
    assert [(w.line, w.message) for w in second.warnings] == [
        (6, "projects[2].dir: 'infra/gone' does not exist")
    ]
    assert parses == [RUNNER_FILE]


def test_without_a_warning_the_yaml_is_not_read_at_all(
    repo: GitRepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = CONFIG.replace("  - dir: infra/gone\n", "")
    repo.write({RUNNER_FILE: text})
    cache_dir = tmp_path / "cache"
    expected = load_in_new_process(repo.path, cache_dir)

    def no_yaml(name: str, text: str) -> loader._Document:
        raise AssertionError("parsed again")

    monkeypatch.setattr(loader, "_read_yaml", no_yaml)
    assert load_in_new_process(repo.path, cache_dir) == expected


def test_a_planted_entry_cannot_smuggle_an_invalid_project(repo: GitRepo, tmp_path: Path) -> None:
    """The cache holds data, not validated projects: what it says is validated again."""
    cache_dir = tmp_path / "cache"
    path = entry_path(cache_dir, CONFIG)
    path.parent.mkdir(parents=True)
    evil = {"version": 1, "projects": [{"dir": "../../etc"}, {"dir": "infra/app"}]}
    path.write_bytes(planted(text_key(CONFIG), evil))

    with pytest.raises(ConfigError) as caught:
        load_in_new_process(repo.path, cache_dir)
    assert caught.value.reason == "'../../etc' escapes the repository"
    assert caught.value.path == "projects[0].dir"


def test_a_planted_entry_cannot_run_code_or_carry_objects(repo: GitRepo, tmp_path: Path) -> None:
    """Not pickle: bytes that would run code are just a damaged entry."""
    cache_dir = tmp_path / "cache"
    path = entry_path(cache_dir, CONFIG)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"cos\nsystem\n(S'touch /tmp/pwned'\ntR.")
    config = load_in_new_process(repo.path, cache_dir)
    assert [p.dir for p in config.projects] == ["infra/app", "infra/db", "infra/gone"]


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "checksum of another"])
def test_a_damaged_entry_is_ignored_and_the_file_parsed(
    repo: GitRepo, tmp_path: Path, damage: str
) -> None:
    cache_dir = tmp_path / "cache"
    expected = load_in_new_process(repo.path, cache_dir)
    path = entry_path(cache_dir, CONFIG)
    raw = path.read_bytes()
    if damage == "flipped byte":
        raw = raw.replace(b"infra/db", b"infra/xx")
    elif damage == "truncated":
        raw = raw[: len(raw) // 2]
    else:
        raw = hashlib.sha256(b"other").hexdigest().encode() + raw[64:]
    path.write_bytes(raw)
    assert load_in_new_process(repo.path, cache_dir) == expected


def test_an_entry_filed_under_another_text_is_ignored(repo: GitRepo, tmp_path: Path) -> None:
    """A valid entry of another config copied under this file's key (say, one without
    the apply requirement) is not taken for this file."""
    cache_dir = tmp_path / "cache"
    other_text = CONFIG.replace("    apply_requirements: [approved]\n", "")
    other = {"version": 1, "projects": [{"dir": "infra/app"}, {"dir": "infra/db"}]}
    path = entry_path(cache_dir, CONFIG)
    path.parent.mkdir(parents=True)
    path.write_bytes(planted(text_key(other_text), other))

    config = load_in_new_process(repo.path, cache_dir)
    db = config.project("infra/db")
    assert db is not None and db.apply_requirements == ("approved",)


def errors_of_two_loads(repo_dir: Path, cache_dir: Path) -> list[str]:
    """The error of a first load (which may fill the cache), then of a second one."""
    errors = []
    for _ in range(2):
        with pytest.raises(ConfigError) as caught:
            load_in_new_process(repo_dir, cache_dir)
        errors.append(str(caught.value))
    return errors


def test_an_invalid_file_fails_the_same_way_from_the_cache(repo: GitRepo, tmp_path: Path) -> None:
    repo.write({RUNNER_FILE: CONFIG + "  - dir: infra/app\n    workspace: -bad\n"})
    cache_dir = tmp_path / "cache"
    errors = errors_of_two_loads(repo.path, cache_dir)
    assert errors[0] == errors[1]
    assert errors[0].startswith("gitops-runner.yaml:8: projects[3].workspace: '-bad'")


@pytest.mark.parametrize(
    "text",
    [
        "version: 1\nprojects: []\n1: not a string key\n",  # JSON would make it "1"
        "version: 1\nprojects: []\nwhen: 2026-01-01\n",  # a date: not JSON at all
        "version: 1\nprojects: &p []\nother: *p\n",  # the general path's: not kept
    ],
)
def test_documents_json_cannot_give_back_exactly_are_not_kept(
    repo: GitRepo, tmp_path: Path, text: str
) -> None:
    repo.write({RUNNER_FILE: text})
    cache_dir = tmp_path / "cache"
    errors = errors_of_two_loads(repo.path, cache_dir)
    assert errors[0] == errors[1]
    assert errors[0].startswith("gitops-runner.yaml:")
    assert not entry_path(cache_dir, text).exists()


def test_what_json_gives_back_is_what_the_yaml_gave(tmp_path: Path) -> None:
    text = "version: 1\nprojects:\n  - {dir: x, n: 1.5, t: true, z: null, l: [1, [2]]}\n"
    fresh = loader._read_yaml(RUNNER_FILE, text)
    cache = DocCache(tmp_path)
    cache.put("k", fresh.data)
    kept = cache.get("k")
    assert kept is not None
    assert loader._freeze(kept) == fresh.data


def test_the_cache_keeps_a_bounded_number_of_files(tmp_path: Path) -> None:
    cache = DocCache(tmp_path)
    for n in range(doc_cache.MAX_ENTRIES + 5):
        cache.put(f"key{n}", {"version": 1, "n": n})
    assert len(list((tmp_path / CACHE_SUBDIR).glob("*.json"))) == doc_cache.MAX_ENTRIES


def test_without_a_cache_dir_nothing_is_written(repo: GitRepo, tmp_path: Path) -> None:
    loader._parsed.cache_clear()
    load_repo_config(repo.path)
    load_repo_config(repo.path, graph=ModuleGraph.build(repo.path))
    assert not list(tmp_path.rglob(CACHE_SUBDIR))


def test_one_memo_entry_per_text_with_or_without_a_cache_dir(repo: GitRepo, tmp_path: Path) -> None:
    """Planning (with the graph's cache dir) and an apply gate (without) of the same file
    share the process's memo: a cache dir does not make a second entry."""
    loader._parsed.cache_clear()
    load_repo_config(repo.path, graph=ModuleGraph.build(repo.path, cache_dir=tmp_path / "c"))
    load_repo_config(repo.path)
    assert loader._parsed.cache_info().currsize == 1
    assert loader._parsed.cache_info().hits == 1
