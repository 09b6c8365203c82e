"""Working copies against real git: bare repositories in tmp_path serve as remotes."""

from __future__ import annotations

import base64
import http.server
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import git
import pytest

from runner.workspace.credentials import HttpAuth, git_env, scrub, split_credentials
from runner.workspace.working_copy import (
    CACHE_DIR,
    LOCAL_HOST_DIR,
    WorkingCopies,
    WorkingCopyError,
    repo_location,
)
from tests.support.git_repo import GitRepo

SECRET = "ghs_Sup3rSecretT0ken"
PROXY_VARS = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")


@dataclass
class Remote:
    """A developer's clone (`src`) pushing to a bare repository the runner fetches from."""

    src: GitRepo
    bare: Path

    @property
    def url(self) -> str:
        return self.bare.as_uri()

    def commit(self, files: dict[str, str], message: str, remove: tuple[str, ...] = ()) -> str:
        self.src.write(files).remove(remove)
        sha = self.src.commit(message)
        self.src.push("origin")
        return sha


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    src = GitRepo.init(tmp_path / "src")
    src.write({"infra/a/main.tf": "# a v1\n", "infra/gone/main.tf": "# gone\n", "README.md": "x\n"})
    src.write({".ci/main.tf": "# a project in a dot directory\n"})
    src.commit("first")
    bare = src.bare_clone(tmp_path / "remote.git")
    src.add_remote("origin", str(bare))
    return Remote(src, bare)


@pytest.fixture
def copies(tmp_path: Path) -> WorkingCopies:
    return WorkingCopies(tmp_path / "root")


def head_of(tree: Path) -> str:
    repo = git.Repo(tree)
    assert repo.head.is_detached
    return repo.head.commit.hexsha


def files_in(tree: Path) -> set[str]:
    return {
        p.relative_to(tree).as_posix()
        for p in tree.rglob("*")
        if p.is_file() and p.name != ".git" and ".git" not in p.relative_to(tree).parts
    }


def worktrees_of(copies: WorkingCopies, url: str) -> list[str]:
    cache = copies.repo_dir(url) / CACHE_DIR
    listing = git.Git().execute(["git", "--git-dir", str(cache), "worktree", "list", "--porcelain"])
    entries = [block.splitlines() for block in listing.split("\n\n") if block.strip()]
    # The first entry is the bare cache itself.
    return [lines[0].split(" ", 1)[1] for lines in entries if "bare" not in lines]


# --- cloning, reuse, fetching -----------------------------------------------------------


def test_checkout_from_file_url_is_at_the_exact_commit(copies: WorkingCopies, remote: Remote):
    first = remote.src.head
    remote.commit({"infra/a/main.tf": "# a v2\n"}, "second")

    tree = copies.checkout(remote.url, "pr-1", first)

    assert tree == copies.repo_dir(remote.url) / "worktrees" / "pr-1"
    assert head_of(tree) == first
    assert (tree / "infra/a/main.tf").read_text() == "# a v1\n"


def test_plain_path_remote_shares_the_cache_of_its_file_url(copies: WorkingCopies, remote: Remote):
    tree = copies.checkout(str(remote.bare), "pr-1", remote.src.head)

    assert head_of(tree) == remote.src.head
    assert copies.repo_dir(str(remote.bare)) == copies.repo_dir(remote.url)
    assert copies.repo_dir(remote.url).relative_to(copies.root).parts[0] == LOCAL_HOST_DIR


def test_relative_path_remote(copies: WorkingCopies, remote: Remote, monkeypatch):
    monkeypatch.chdir(remote.bare.parent)
    tree = copies.checkout("remote.git", "pr-1", remote.src.head)
    assert head_of(tree) == remote.src.head


def test_second_event_fetches_into_the_same_cache(copies: WorkingCopies, remote: Remote):
    copies.checkout(remote.url, "pr-1", remote.src.head)
    cache = copies.repo_dir(remote.url) / CACHE_DIR
    inode = cache.stat().st_ino
    (cache / "kept-marker").write_text("still here")

    second = remote.commit({"infra/a/main.tf": "# a v2\n"}, "second")
    tree = copies.checkout(remote.url, "pr-1", second)

    assert head_of(tree) == second
    assert cache.stat().st_ino == inode
    assert (cache / "kept-marker").read_text() == "still here"


def test_branch_names_resolve_to_the_remote_head(copies: WorkingCopies, remote: Remote):
    assert copies.resolve(remote.url, "main") == remote.src.head
    newer = remote.commit({"b.tf": "b\n"}, "newer")
    assert copies.resolve(remote.url, "main") == newer


def test_fetch_by_pull_ref_or_sha_when_no_branch_has_the_commit(
    tmp_path: Path, copies: WorkingCopies, remote: Remote
):
    remote.src.branch("feature").checkout("feature")
    head = remote.src.write({"feature.tf": "f\n"}).commit("feature")
    # Like GitHub: the PR head lives under refs/pull/N/head, the fork's branch is not here.
    bare = git.Repo(remote.bare)
    remote.src.repo.git.push(str(remote.bare), f"{head}:refs/pull/7/head")
    assert "feature" not in [h.name for h in bare.heads]

    copies.fetch(remote.url, "refs/pull/7/head", "refs/pull/999/head")  # 999: skipped
    assert copies.resolve(remote.url, "refs/pull/7/head") == head

    by_sha = WorkingCopies(tmp_path / "other-root")
    tree = by_sha.checkout(remote.url, "pr-7", head)
    assert (tree / "feature.tf").is_file()


def test_unknown_commit_is_an_error(copies: WorkingCopies, remote: Remote):
    with pytest.raises(WorkingCopyError, match="not in"):
        copies.checkout(remote.url, "pr-1", "0" * 40)
    with pytest.raises(WorkingCopyError, match="not a commit"):
        copies.resolve(remote.url, "no-such-branch")


def test_fetch_recovers_from_a_stale_git_lock(copies: WorkingCopies, remote: Remote):
    copies.fetch(remote.url)
    stale = copies.repo_dir(remote.url) / CACHE_DIR / "refs" / "heads" / "main.lock"
    stale.write_text("left by a killed fetch\n")
    newer = remote.commit({"b.tf": "b\n"}, "newer")

    assert copies.resolve(remote.url, "main") == newer
    assert not stale.exists()


# --- PR trees -------------------------------------------------------------------------


def test_moving_a_tree_leaves_nothing_of_the_previous_commit(copies: WorkingCopies, remote: Remote):
    first = remote.src.head
    tree = copies.checkout(remote.url, "pr-1", first)
    # What a plan leaves behind, plus a stray edit of a tracked file.
    leftovers = (
        "infra/a/.terraform/providers/p",
        "infra/a/.terraform/modules/modules.json",
        "infra/a/.terraform/terraform.tfstate",  # the backend record: not a cache
        "infra/gone/.terraform/modules/m/main.tf",
        ".ci/.terraform/providers/p",
    )
    for rel in leftovers:
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_text("cache\n")
    (tree / "infra/a/gitops-default.tfplan").write_text("old plan\n")
    (tree / "infra/a/main.tf").write_text("edited\n")
    (tree / "junk").mkdir()
    (tree / "junk/x.txt").write_text("x\n")

    second = remote.commit({"infra/a/extra.tf": "# new\n"}, "second", remove=("infra/gone",))
    assert copies.checkout(remote.url, "pr-1", second) == tree

    assert head_of(tree) == second
    assert files_in(tree) == {
        "README.md",
        "infra/a/main.tf",
        "infra/a/extra.tf",
        "infra/a/.terraform/providers/p",
        "infra/a/.terraform/modules/modules.json",
        ".ci/main.tf",
        ".ci/.terraform/providers/p",
    }
    assert (tree / "infra/a/main.tf").read_text() == "# a v1\n"
    assert not (tree / "infra/gone").exists()
    status = git.Repo(tree).git.status("--porcelain", "--untracked-files=all", "--ignored")
    assert sorted(status.splitlines()) == [
        "?? .ci/.terraform/providers/p",
        "?? infra/a/.terraform/modules/modules.json",
        "?? infra/a/.terraform/providers/p",
    ]


def test_moving_without_keeping_terraform_dirs(copies: WorkingCopies, remote: Remote):
    tree = copies.checkout(remote.url, "pr-1", remote.src.head)
    (tree / "infra/a/.terraform").mkdir()
    second = remote.commit({"infra/a/main.tf": "# a v2\n"}, "second")

    copies.checkout(remote.url, "pr-1", second, keep_terraform_dirs=False)

    assert not (tree / "infra/a/.terraform").exists()


def test_same_commit_again_keeps_the_plan_files(copies: WorkingCopies, remote: Remote):
    tree = copies.checkout(remote.url, "pr-1", remote.src.head)
    plan = tree / "infra/a/gitops-default.tfplan"
    plan.write_text("plan to apply\n")

    copies.checkout(remote.url, "pr-1", remote.src.head)

    assert plan.read_text() == "plan to apply\n"


def test_an_interrupted_move_is_redone(copies: WorkingCopies, remote: Remote):
    tree = copies.checkout(remote.url, "pr-1", remote.src.head)
    (tree / "leftover.txt").write_text("x\n")
    # A crash after git moved HEAD but before the clean: no settled marker.
    admin = Path((tree / ".git").read_text().split(":", 1)[1].strip())
    (admin / "gitops-runner-settled").unlink()

    copies.checkout(remote.url, "pr-1", remote.src.head)

    assert not (tree / "leftover.txt").exists()


def test_a_broken_tree_directory_is_rebuilt(copies: WorkingCopies, remote: Remote):
    tree = copies.checkout(remote.url, "pr-1", remote.src.head)
    (tree / ".git").unlink()

    assert copies.checkout(remote.url, "pr-1", remote.src.head) == tree
    assert head_of(tree) == remote.src.head


def test_two_keys_have_independent_trees(copies: WorkingCopies, remote: Remote):
    first = remote.src.head
    second = remote.commit({"infra/a/main.tf": "# a v2\n"}, "second")

    one = copies.checkout(remote.url, "pr-1", first)
    two = copies.checkout(remote.url, "pr-2", second)
    (one / "infra/a/gitops-default.tfplan").write_text("plan of pr-1\n")

    assert one != two
    assert (one / "infra/a/main.tf").read_text() == "# a v1\n"
    assert (two / "infra/a/main.tf").read_text() == "# a v2\n"
    assert not (two / "infra/a/gitops-default.tfplan").exists()


def test_concurrent_checkouts_of_one_repository(copies: WorkingCopies, remote: Remote):
    commits = [remote.src.head]
    commits += [remote.commit({f"f{i}.tf": f"{i}\n"}, f"c{i}") for i in range(3)]
    jobs = [(f"pr-{i}", commits[i % len(commits)]) for i in range(8)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        trees = list(pool.map(lambda job: copies.checkout(remote.url, *job), jobs))

    for tree, (_, sha) in zip(trees, jobs, strict=True):
        assert head_of(tree) == sha
    assert len(worktrees_of(copies, remote.url)) == len(jobs)
    cache = copies.repo_dir(remote.url) / CACHE_DIR
    git.Git().execute(["git", "--git-dir", str(cache), "fsck", "--no-progress"])


def test_remove(copies: WorkingCopies, remote: Remote, tmp_path: Path):
    tree = copies.checkout(remote.url, "pr-1", remote.src.head)
    kept = copies.checkout(remote.url, "pr-2", remote.src.head)
    (tree / "infra/a/.terraform").mkdir()

    copies.remove(remote.url, "pr-1")
    copies.remove(remote.url, "pr-1")  # closed twice: nothing left to do

    assert not tree.exists()
    assert worktrees_of(copies, remote.url) == [str(kept)]
    copies.remove((tmp_path / "never-seen.git").as_uri(), "pr-1")
    assert not copies.repo_dir((tmp_path / "never-seen.git").as_uri()).exists()


def test_keys_cannot_escape_the_worktrees_directory(copies: WorkingCopies, remote: Remote):
    for key in ("..", "../x", "a/b", "", ".hidden"):
        with pytest.raises(ValueError):
            copies.checkout(remote.url, key, remote.src.head)


# --- one-off trees, merges, history questions -------------------------------------------


def test_checkout_fresh_writes_files_only(copies: WorkingCopies, remote: Remote, tmp_path: Path):
    dest = copies.checkout_fresh(remote.url, "main", tmp_path / "drift")

    assert files_in(dest) == {"README.md", ".ci/main.tf", "infra/a/main.tf", "infra/gone/main.tf"}
    assert not (dest / ".git").exists()
    assert worktrees_of(copies, remote.url) == []
    with pytest.raises(WorkingCopyError, match="not empty"):
        copies.checkout_fresh(remote.url, "main", dest)


def test_is_ancestor(copies: WorkingCopies, remote: Remote):
    first = remote.src.head
    remote.src.branch("feature")
    base = remote.commit({"base.tf": "base\n"}, "base moved on")
    remote.src.checkout("feature")
    head = remote.commit({"pr.tf": "pr\n"}, "pr")

    assert copies.is_ancestor(remote.url, first, head)
    assert not copies.is_ancestor(remote.url, base, head)  # the PR is behind its base
    remote.src.repo.git.merge("-q", "--no-edit", "main")
    remote.src.push("origin", "feature")
    assert copies.is_ancestor(remote.url, base, remote.src.head)


def test_changed_files_of_a_pr(copies: WorkingCopies, remote: Remote):
    remote.src.branch("feature")
    base = remote.commit({"base.tf": "base\n"}, "base moved on")
    remote.src.checkout("feature")
    head = remote.commit({"infra/a/main.tf": "# a v2\n"}, "pr", remove=("infra/gone/main.tf",))

    assert copies.changed_files(remote.url, base, head) == [
        "infra/a/main.tf",
        "infra/gone/main.tf",
    ]


# --- where repositories live ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "parts"),
    [
        ("https://github.com/acme/infra.git", ("github.com", "acme", "infra")),
        ("https://GitHub.com/acme/infra", ("github.com", "acme", "infra")),
        (f"https://x-access-token:{SECRET}@github.com/acme/infra", ("github.com", "acme", "infra")),
        ("git@github.com:acme/infra.git", ("github.com", "acme", "infra")),
        ("ssh://git@ghe.example:2222/acme/infra.git", ("ghe.example%3A2222", "acme", "infra")),
        ("https://gitlab.com/group/sub/infra.git", ("gitlab.com", "group%2Fsub", "infra")),
        ("https://host/infra.git", ("host", "-", "infra")),
        ("file:///srv/git/infra.git", (LOCAL_HOST_DIR, "%2Fsrv%2Fgit", "infra.git")),
        ("/srv/git/infra.git", (LOCAL_HOST_DIR, "%2Fsrv%2Fgit", "infra.git")),
        ("/srv/git/..", (LOCAL_HOST_DIR, "%2F", "srv")),
        ("https://h/a/../..", ("h", "a%2F..", "%2E%2E")),
    ],
)
def test_repository_directories(tmp_path: Path, url: str, parts: tuple[str, str, str]):
    directory = repo_location(url).directory(tmp_path)
    assert directory.relative_to(tmp_path).parts == parts


# --- credentials ---------------------------------------------------------------------------


def test_extra_header_env_carries_the_token():
    env = git_env(HttpAuth(token=SECRET), base={})

    assert env["GIT_CONFIG_COUNT"] == "1"
    assert env["GIT_CONFIG_KEY_0"] == "http.extraHeader"
    scheme, value = env["GIT_CONFIG_VALUE_0"].removeprefix("Authorization: ").split(" ")
    assert scheme == "Basic"
    assert base64.b64decode(value).decode() == f"x-access-token:{SECRET}"
    assert env["GIT_TERMINAL_PROMPT"] == "0"


def test_extra_header_env_appends_to_the_operators_config():
    env = git_env(HttpAuth(token=SECRET), base={"GIT_CONFIG_COUNT": "2"})
    assert env["GIT_CONFIG_COUNT"] == "3"
    assert env["GIT_CONFIG_KEY_2"] == "http.extraHeader"


def test_no_token_no_header():
    assert "GIT_CONFIG_COUNT" not in git_env(None, base={})


def test_credentials_are_split_off_urls():
    assert split_credentials(f"https://x-access-token:{SECRET}@h/a/b.git") == (
        "https://h/a/b.git",
        HttpAuth(token=SECRET),
    )
    assert split_credentials(f"https://{SECRET}@h:8443/a/b") == (
        "https://h:8443/a/b",
        HttpAuth(token=SECRET),
    )
    assert split_credentials("https://oauth2:t%40k@h/a") == (
        "https://h/a",
        HttpAuth(token="t@k", username="oauth2"),
    )
    assert split_credentials("git@github.com:a/b.git") == ("git@github.com:a/b.git", None)
    assert SECRET not in repr(HttpAuth(token=SECRET))


def test_scrub_removes_every_spelling_of_the_token():
    auth = HttpAuth(token=SECRET)
    header = auth.header_value.split(" ")[-1]
    text = f"https://user:{SECRET}@h/x failed; header {header}; again {SECRET}"
    cleaned = scrub(text, auth.secrets)
    assert SECRET not in cleaned
    assert header not in cleaned
    assert "https://***@h/x" in cleaned


def _assert_no_secret_under(root: Path, *secrets: str) -> None:
    for path in root.rglob("*"):
        assert not any(s in path.name for s in secrets), path
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            assert not any(s.encode() in data for s in secrets), path


def _assert_no_secret_in_error(error: BaseException, *secrets: str) -> None:
    texts = [str(error), repr(error), *map(str, error.args)]
    assert not any(s in text for text in texts for s in secrets)
    assert error.__cause__ is None
    assert error.__context__ is None


def test_token_in_clone_url_never_leaks(tmp_path: Path, monkeypatch):
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    copies = WorkingCopies(tmp_path / "root")
    encoded = HttpAuth(token=SECRET).header_value.split(" ")[-1]
    url = f"https://x-access-token:{SECRET}@127.0.0.1:1/acme/repo.git"  # nothing listens

    with pytest.raises(WorkingCopyError) as caught:
        copies.checkout(url, "pr-1", "a" * 40)

    _assert_no_secret_in_error(caught.value, SECRET, encoded)
    assert "127.0.0.1" in str(caught.value)
    _assert_no_secret_under(copies.root, SECRET, encoded)


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request with 404, remembering the Authorization headers it saw."""

    seen: list[str | None]

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        self.send_error(404)

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass


@pytest.fixture
def recording_server() -> Iterator[tuple[str, list[str | None]]]:
    seen: list[str | None] = []
    handler = type("Handler", (_RecordingHandler,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_clone_credentials_are_sent_as_an_extra_header_only(
    tmp_path: Path, monkeypatch, recording_server: tuple[str, list[str | None]]
):
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")
    base_url, seen = recording_server
    asked: list[str] = []

    auth = HttpAuth(token=SECRET)

    def credentials_for(url: str) -> HttpAuth:
        asked.append(url)
        return auth

    copies = WorkingCopies(tmp_path / "root", credentials_for=credentials_for)
    with pytest.raises(WorkingCopyError) as caught:
        copies.fetch(f"{base_url}/acme/repo.git")

    assert asked == [f"{base_url}/acme/repo.git"]
    assert seen and set(seen) == {auth.header_value.removeprefix("Authorization: ")}
    _assert_no_secret_in_error(caught.value, *auth.secrets)
    _assert_no_secret_under(copies.root, *auth.secrets)
    assert SECRET not in os.environ.get("GIT_CONFIG_VALUE_0", "")


def test_local_remotes_never_ask_for_a_token(tmp_path: Path, remote: Remote):
    def credentials_for(url: str) -> HttpAuth:
        raise AssertionError(f"asked for a token for {url}")

    copies = WorkingCopies(tmp_path / "root", credentials_for=credentials_for)
    copies.checkout(remote.url, "pr-1", remote.src.head)
    copies.checkout(str(remote.bare), "pr-2", remote.src.head)
