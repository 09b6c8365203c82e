"""Git checkouts of the repositories the runner serves, kept on disk and reused.

Every event needs the repository at an exact commit. Cloning per event is slow for
big histories and loses `.terraform/` (providers, modules) each time, so each
repository gets one cache that is only ever fetched into, and each pull request one
working tree that is moved from commit to commit. Layout (docs/working-copies.md):

    root/<host>/<owner>/<name>/
        cache.git/          bare repository: all objects, refs/heads/* as on the remote
        worktrees/<key>/    one linked worktree per pull request (`pr-12`), detached
        tmp/                scratch files (temporary index files of one-off trees)
        .lock               file lock serialising every write to the cache and its trees

Why a bare cache with linked worktrees rather than a clone per PR: the objects are
stored once and fetched once for all PRs, and `git worktree` keeps each tree's index
and HEAD apart, so trees of different PRs never see each other's state.

Credentials never touch the disk (see credentials.py), and every git command names
its repository explicitly (`--git-dir`, `--work-tree`): git never goes looking for a
repository in the parent directories, which could be someone else's checkout.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import git
from filelock import FileLock

from runner.config.loader import ATLANTIS_FILES, RUNNER_FILE
from runner.projects.changes import ChangeDetectionError
from runner.projects.changes import changed_files as changed_files_between
from runner.workspace.confine import remove_escaping_links
from runner.workspace.credentials import (
    HttpAuth,
    git_env,
    is_http_url,
    scrub,
    split_credentials,
)

log = logging.getLogger(__name__)

# The HTTPS credentials for a clone URL (without credentials), None for none.
CredentialsFor = Callable[[str], HttpAuth | None]

CACHE_DIR = "cache.git"
WORKTREES_DIR = "worktrees"
# Written into a worktree's admin dir (not its files) once a move to a commit has
# finished, checkout and clean included; a tree without it is redone, not trusted.
SETTLED_MARKER = "gitops-runner-settled"
TERRAFORM_DIR = ".terraform"
# What a moved tree keeps of a `.terraform/`: the download caches, nothing with state.
KEPT_TERRAFORM_ENTRIES = ("providers", "modules")
# Directory standing for plain paths and file:// URLs; `_` cannot occur in a hostname.
LOCAL_HOST_DIR = "_local"
# Owner directory of a URL without one (`https://host/repo.git`); no forge allows it.
NO_OWNER_DIR = "-"
DEFAULT_NETWORK_TIMEOUT_S = 900.0
GIT_SYMLINK_MODE = "120000"
# Read (never written) by the config loader, which refuses a link leaving the checkout.
CONFIG_FILES = frozenset({RUNNER_FILE, *ATLANTIS_FILES})

_SHA = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Refs fetched by name besides the branches: `refs/pull/12/head`, `refs/merge-requests/3/head`.
_REF = re.compile(r"^refs/[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)+$")
_SCP_LIKE = re.compile(r"^(?:[^@/]+@)?(?P<host>[^:/]+):(?P<path>.+)$")


class WorkingCopyError(Exception):
    """A git operation on a working copy failed. The message never contains a token."""


@dataclass(frozen=True)
class RepoLocation:
    """Where one repository's cache and trees live, derived from its clone URL alone."""

    host: str
    owner: str
    name: str

    def directory(self, root: Path) -> Path:
        return root / _dir_segment(self.host) / _dir_segment(self.owner) / _dir_segment(self.name)


@dataclass(frozen=True)
class _Remote:
    """One repository as this module works with it: URL without credentials, auth apart."""

    fetch_url: str
    directory: Path
    auth: HttpAuth | None = field(default=None, repr=False)

    @property
    def cache(self) -> Path:
        return self.directory / CACHE_DIR

    @property
    def worktrees(self) -> Path:
        return self.directory / WORKTREES_DIR

    @property
    def secrets(self) -> tuple[str, ...]:
        return self.auth.secrets if self.auth else ()


@dataclass(frozen=True)
class _GitResult:
    status: int
    stdout: str
    stderr: str


def repo_location(clone_url: str) -> RepoLocation:
    """Host, owner path and name of a clone URL, scp-like address, file:// URL or path.

    For a network URL the `.git` suffix and the case of the host do not matter (the
    forges treat them as the same repository); for a local path they do, so a local
    path keeps its directory name as it is.
    """
    url, _ = split_credentials(clone_url)
    if "://" in url and not url.lower().startswith("file://"):
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.port:
            host += f":{parts.port}"
        return _network_location(host, unquote(parts.path))
    scp = _SCP_LIKE.match(url)
    if scp and "://" not in url:
        return _network_location(scp["host"].lower(), scp["path"])
    path = _local_path(url)
    return RepoLocation(LOCAL_HOST_DIR, posixpath.dirname(path), posixpath.basename(path))


def _network_location(host: str, path: str) -> RepoLocation:
    segments = [s for s in path.split("/") if s]
    if not host or not segments:
        raise WorkingCopyError(f"cannot tell the repository from the clone URL (host {host!r})")
    name = segments[-1].removesuffix(".git")
    owner = "/".join(segments[:-1]) or NO_OWNER_DIR
    return RepoLocation(host, owner, name or segments[-1])


def _local_path(url: str) -> str:
    """Absolute path of a file:// URL or a plain path. Symlinks are kept as given."""
    raw = unquote(urlsplit(url).path) if url.lower().startswith("file://") else url
    return os.path.abspath(os.path.expanduser(raw)).rstrip("/") or "/"


def _dir_segment(text: str) -> str:
    """One directory name for any string, and distinct strings never share one.

    Everything but RFC 3986's unreserved characters is percent-encoded, so a
    GitLab subgroup path (`group/sub`) or a local parent directory becomes a single
    segment and `..` cannot climb out of the root.
    """
    encoded = quote(text, safe="-._~")
    if encoded in ("", ".", ".."):
        return "%2E" * len(encoded) or "%00"
    return encoded


def _is_sha(rev: str) -> bool:
    return bool(_SHA.match(rev))


def _check_key(key: str) -> None:
    if not _KEY.match(key) or ".." in key:
        raise ValueError(f"invalid working tree key {key!r}: use letters, digits, '.', '_', '-'")


class WorkingCopies:
    """The runner's git checkouts: one fetched-into cache per repository, trees per PR.

    Thread- and process-safe: every operation that writes a cache or a tree takes
    that repository's file lock. Read-only queries run unlocked (git's object and
    ref updates are atomic). What the lock does not cover is a tree being *used*
    (a plan running in it) while another call moves or removes it: the job layer
    runs one job per pull request at a time.
    """

    def __init__(
        self,
        root: Path,
        credentials_for: CredentialsFor | None = None,
        *,
        network_timeout_s: float | None = DEFAULT_NETWORK_TIMEOUT_S,
    ) -> None:
        """`credentials_for(url)` gives the HTTPS credentials for a clone URL without any.

        `network_timeout_s` bounds each fetch: a hung fetch would otherwise hold the
        repository's lock, and with it every PR of that repository, forever.
        """
        self.root = Path(root).expanduser().absolute()
        self._credentials_for = credentials_for
        self._network_timeout_s = network_timeout_s

    # --- paths -------------------------------------------------------------------

    def repo_dir(self, repo_url: str) -> Path:
        """The directory holding the repository's cache and trees."""
        return repo_location(repo_url).directory(self.root)

    # --- public operations ---------------------------------------------------------

    def fetch(self, repo_url: str, *revs: str) -> None:
        """Bring the cache up to date with the remote's branches and `revs`.

        `revs` may be full SHAs (fetched by SHA when no branch contains them, which
        GitHub and GitLab allow for PR heads), branch names, or other refs such as
        `refs/pull/12/head` (fetched if the remote has them, skipped otherwise). When
        every rev is a SHA already in the cache, nothing is fetched: a SHA is immutable.
        """
        remote = self._remote(repo_url)
        with self._locked(remote):
            self._fetch_locked(remote, revs)

    def resolve(self, repo_url: str, rev: str) -> str:
        """The commit SHA of `rev` (a SHA, branch or ref), fetching it if needed."""
        remote = self._remote(repo_url)
        with self._locked(remote):
            return self._resolve_locked(remote, rev)

    def checkout(
        self, repo_url: str, key: str, commit: str, *, keep_terraform_dirs: bool = True
    ) -> Path:
        """The working tree for `key`, at `commit` exactly (detached HEAD).

        A tree already at `commit` is returned untouched, so the plan files written
        there stay for the apply. Moved to another commit, the tree matches a fresh
        checkout: tracked files as in `commit`, every untracked or ignored file gone,
        except `.terraform/providers` and `.terraform/modules` of directories that
        still hold tracked files (not downloaded again; `terraform init` re-checks
        them against the new commit). `keep_terraform_dirs=False` removes those too.
        """
        _check_key(key)
        remote = self._remote(repo_url)
        tree = remote.worktrees / key
        with self._locked(remote):
            sha = self._resolve_locked(remote, commit)
            admin = self._admin_dir(remote, tree)
            if admin is None:
                self._add_tree(remote, tree, sha)
                admin = self._admin_dir(remote, tree)
                if admin is None:
                    raise WorkingCopyError(f"git did not register the working tree {tree}")
            elif self._is_settled(admin, sha):
                return tree
            else:
                self._move_tree(remote, admin, tree, sha, keep_terraform_dirs)
            self._drop_escaping_links(remote, tree, sha)
            (admin / SETTLED_MARKER).write_text(sha + "\n")
        return tree

    def checkout_fresh(self, repo_url: str, commit: str, dest: Path) -> Path:
        """Write the files of `commit` into `dest` (absent or empty), without `.git`.

        For one-off trees (drift scans, merge commits): nothing is registered in the
        cache, so the caller owns `dest` and simply deletes it when done.
        """
        remote = self._remote(repo_url)
        with self._locked(remote):
            sha = self._resolve_locked(remote, commit)
        dest = Path(dest).absolute()
        if dest.exists() and any(dest.iterdir()):
            raise WorkingCopyError(f"{dest} is not empty")
        dest.mkdir(parents=True, exist_ok=True)
        try:
            self._export(remote, sha, dest)
            self._drop_escaping_links(remote, dest, sha)
        except BaseException:
            _rmtree(dest)
            raise
        return dest

    def remove(self, repo_url: str, key: str) -> None:
        """Delete the working tree of `key` (the PR was closed). No-op if there is none."""
        _check_key(key)
        remote = self._remote(repo_url)
        if not remote.directory.is_dir():
            return
        with self._locked(remote):
            _rmtree(remote.worktrees / key)
            if remote.cache.is_dir():
                # Drops the admin entry of every tree whose directory is gone.
                self._git(remote, "worktree", "prune", what="prune")

    def changed_files(self, repo_url: str, base: str, head: str) -> list[str]:
        """Files a PR changes (`base...head`, as the forge shows), via projects.changes."""
        remote = self._remote(repo_url)
        with self._locked(remote):
            base_sha = self._resolve_locked(remote, base)
            head_sha = self._resolve_locked(remote, head)
        error: str | None = None
        try:
            return changed_files_between(remote.cache, base_sha, head_sha)
        except ChangeDetectionError as exc:
            error = str(exc)
        raise WorkingCopyError(scrub(error, remote.secrets))

    def is_ancestor(self, repo_url: str, ancestor: str, descendant: str) -> bool:
        """Whether `descendant` contains `ancestor` (e.g. the PR has the base head merged)."""
        remote = self._remote(repo_url)
        with self._locked(remote):
            older = self._resolve_locked(remote, ancestor)
            newer = self._resolve_locked(remote, descendant)
        result = self._git(
            remote, "merge-base", "--is-ancestor", older, newer, what="merge-base", ok=(0, 1)
        )
        return result.status == 0

    def first_parent(self, repo_url: str, commit: str) -> str:
        """The first parent of `commit`: for a merge commit, the base branch before it."""
        remote = self._remote(repo_url)
        with self._locked(remote):
            sha = self._resolve_locked(remote, commit)
            result = self._git(
                remote, "rev-parse", "--verify", f"{sha}^1", what="rev-parse", ok=None
            )
        if result.status != 0:
            raise WorkingCopyError(f"{sha[:12]} has no parent in {remote.fetch_url}")
        return result.stdout.strip()

    # --- repositories and credentials ---------------------------------------------

    def _remote(self, repo_url: str) -> _Remote:
        url, auth = split_credentials(repo_url)
        if auth is None and self._credentials_for is not None and is_http_url(url):
            auth = self._credentials_for(url)
        if "://" not in url and not _SCP_LIKE.match(url):
            url = _local_path(url)  # git runs elsewhere: a relative path would break
        return _Remote(fetch_url=url, directory=self.repo_dir(repo_url), auth=auth)

    @contextmanager
    def _locked(self, remote: _Remote) -> Iterator[None]:
        """Hold the repository's lock. A new FileLock per call: each holds its own
        descriptor, so threads of one process exclude each other like processes do."""
        remote.directory.mkdir(parents=True, exist_ok=True)
        with FileLock(str(remote.directory / ".lock")):
            yield

    # --- cache ----------------------------------------------------------------------

    def _ensure_cache(self, remote: _Remote) -> None:
        """Create the bare cache once. Built aside and renamed, so it is never half-made.

        `git init` + fetch rather than `git clone`: no remote is configured, so no
        URL is written to disk; every fetch names its URL and refspecs itself.
        """
        if (remote.cache / "HEAD").is_file():
            return
        partial = remote.directory / (CACHE_DIR + ".partial")
        _rmtree(partial)
        # An empty template: no sample hooks, nothing from the operator's template dir.
        self._git(remote, "init", "--bare", "--template=", "-q", what="init", git_dir=partial)
        settings = {
            # gc runs inside our fetch, under our lock, never detached beyond it.
            "gc.autoDetach": "false",
            "core.logAllRefUpdates": "false",
        }
        for name, value in settings.items():
            self._git(remote, "config", name, value, what="config", git_dir=partial)
        partial.rename(remote.cache)

    def _fetch_locked(self, remote: _Remote, revs: Sequence[str]) -> None:
        self._ensure_cache(remote)
        shas = [rev.lower() for rev in revs if _is_sha(rev.lower())]
        if revs and len(shas) == len(revs) and all(self._has_commit(remote, s) for s in shas):
            return
        _clear_stale_locks(remote.cache)
        self._git_fetch(remote, ["+refs/heads/*:refs/heads/*"], prune=True)
        for ref in revs:
            if ref.startswith("refs/") and not ref.startswith("refs/heads/"):
                self._fetch_optional_ref(remote, ref)
        missing = [sha for sha in shas if not self._has_commit(remote, sha)]
        if not missing:
            return
        # Not on any branch (a PR from a fork, a force-pushed-away commit): ask by SHA.
        result = self._git_fetch(remote, missing, check=False)
        still_missing = [sha for sha in missing if not self._has_commit(remote, sha)]
        if still_missing:
            raise WorkingCopyError(
                scrub(
                    f"commit {', '.join(still_missing)} is not in {remote.fetch_url} "
                    f"(or the server refuses fetching it by SHA): {_tail(result.stderr)}",
                    remote.secrets,
                )
            )

    def _fetch_optional_ref(self, remote: _Remote, ref: str) -> None:
        if not _REF.match(ref) or ".." in ref:
            raise WorkingCopyError(f"refusing to fetch the malformed ref {ref!r}")
        result = self._git_fetch(remote, [f"+{ref}:{ref}"], check=False)
        if result.status != 0:
            # GitHub has refs/pull/N/head, a plain bare remote does not: not an error.
            reason = scrub(_tail(result.stderr), remote.secrets)
            log.debug("ref %s not fetched from %s: %s", ref, remote.fetch_url, reason)

    def _git_fetch(
        self, remote: _Remote, refspecs: Sequence[str], *, prune: bool = False, check: bool = True
    ) -> _GitResult:
        log.debug("fetching %s from %s", " ".join(refspecs), remote.fetch_url)
        return self._git(
            remote,
            *("fetch", "--quiet", "--no-tags", "--no-write-fetch-head"),
            *(["--prune"] if prune else []),
            *("--end-of-options", remote.fetch_url, *refspecs),
            what="fetch",
            network=True,
            ok=(0,) if check else None,
        )

    def _has_commit(self, remote: _Remote, sha: str) -> bool:
        result = self._git(remote, "cat-file", "-e", f"{sha}^{{commit}}", what="cat-file", ok=None)
        return result.status == 0

    def _resolve_locked(self, remote: _Remote, rev: str) -> str:
        """SHA of `rev`. A SHA in the cache needs no fetch; a name always does (it moves)."""
        if _is_sha(rev.lower()):
            self._fetch_locked(remote, [rev.lower()])
            return rev.lower()
        self._fetch_locked(remote, [rev])
        result = self._git(
            remote,
            *("rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"),
            what="rev-parse",
            ok=None,
        )
        if result.status != 0:
            raise WorkingCopyError(f"{rev!r} is not a commit of {remote.fetch_url}")
        return result.stdout.strip()

    # --- trees ------------------------------------------------------------------------

    def _admin_dir(self, remote: _Remote, tree: Path) -> Path | None:
        """The git admin dir of `tree` if it is a healthy worktree of this cache, else None.

        Read from the files rather than asked of git: git would search the parent
        directories of a broken tree and could answer for an unrelated repository.
        """
        dotgit = tree / ".git"
        if not dotgit.is_file():
            return None
        content = dotgit.read_text(errors="replace").strip()
        if not content.startswith("gitdir:"):
            return None
        admin = Path(content.removeprefix("gitdir:").strip())
        expected_parent = os.path.realpath(remote.cache / "worktrees")
        if os.path.realpath(admin.parent) != expected_parent:
            return None
        try:
            back = (admin / "gitdir").read_text().strip()
        except OSError:
            return None
        if os.path.realpath(back) != os.path.realpath(dotgit) or not (admin / "HEAD").is_file():
            return None
        return admin

    def _add_tree(self, remote: _Remote, tree: Path, sha: str) -> None:
        # Whatever is there is not a usable tree (a crash mid-add, a manual deletion).
        _rmtree(tree)
        self._git(remote, "worktree", "prune", what="prune")
        tree.parent.mkdir(parents=True, exist_ok=True)
        self._git(
            remote,
            *("worktree", "add", "--detach", "--force", "--quiet", str(tree), sha),
            what="worktree add",
        )

    @staticmethod
    def _is_settled(admin: Path, sha: str) -> bool:
        try:
            marker = (admin / SETTLED_MARKER).read_text().strip()
            head = (admin / "HEAD").read_text().strip()
        except OSError:
            return False
        return marker == sha and head == sha

    def _move_tree(
        self, remote: _Remote, admin: Path, tree: Path, sha: str, keep_terraform_dirs: bool
    ) -> None:
        (admin / SETTLED_MARKER).unlink(missing_ok=True)
        _clear_stale_locks(admin)
        self._git(
            remote,
            *("-c", "advice.detachedHead=false", "checkout", "--quiet", "--force", "--detach", sha),
            what="checkout",
            git_dir=admin,
            work_tree=tree,
        )
        # -ff: nested repositories too; -x: ignored files too (old plan files, state).
        excludes = ["-e", TERRAFORM_DIR] if keep_terraform_dirs else []
        self._git(remote, "clean", "-ffdxq", *excludes, what="clean", git_dir=admin, work_tree=tree)
        if keep_terraform_dirs:
            tracked = self._git(
                remote, "ls-files", "-z", what="ls-files", git_dir=admin, work_tree=tree
            ).stdout
            _prune_terraform_dirs(tree, [p for p in tracked.split("\0") if p])

    def _drop_escaping_links(self, remote: _Remote, tree: Path, sha: str) -> None:
        """Delete the committed symlinks of `tree` that point outside it (the links only).

        Such a link is never needed to plan a repository, and everything that writes or
        deletes in the tree (our cleanup, Terraform's `.terraform`, plan files, lock
        info) would otherwise act on the runner's own files through it.
        """
        listing = self._git(
            remote, *("ls-tree", "-r", "-z", "--full-tree", sha), what="ls-tree"
        ).stdout
        links = [entry.split("\t", 1)[1] for entry in listing.split("\0") if _is_link_entry(entry)]
        # The config loader refuses such a file with a clear error; gone, it would
        # silently fall back to autodiscovery.
        links = [rel for rel in links if rel not in CONFIG_FILES]
        for rel in remove_escaping_links(tree, links):
            log.warning("removed the symlink %s of %s: it points outside the checkout", rel, sha)

    def _export(self, remote: _Remote, sha: str, dest: Path) -> None:
        """Check `sha` out into `dest` through a throwaway index; the cache is only read."""
        scratch = remote.directory / "tmp"
        scratch.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(dir=scratch) as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self._git(remote, "read-tree", sha, what="read-tree", env=env, work_tree=dest)
            self._git(remote, "checkout-index", "-a", "-f", what="export", env=env, work_tree=dest)

    # --- running git ----------------------------------------------------------------

    def _git(
        self,
        remote: _Remote,
        *args: str,
        what: str,
        ok: Collection[int] | None = (0,),
        network: bool = False,
        env: Mapping[str, str] | None = None,
        git_dir: Path | None = None,
        work_tree: Path | None = None,
    ) -> _GitResult:
        """Run git; raise WorkingCopyError, scrubbed of credentials, unless status is in `ok`.

        The repository is always named (`git_dir`, default the cache), never searched
        for. `ok=None` accepts any status. Only network commands get the credentials,
        in their environment; the command line never holds them.
        """
        location = ["--git-dir", str(git_dir or remote.cache)]
        if work_tree is not None:
            location += ["--work-tree", str(work_tree)]
        full_env = {**git_env(remote.auth if network else None), **(env or {})}
        message: str | None = None
        try:
            status, stdout, stderr = git.Git(str(self.root)).execute(
                ["git", *location, *args],
                with_extended_output=True,
                with_exceptions=False,
                env=full_env,
                kill_after_timeout=self._network_timeout_s if network else None,
                strip_newline_in_stdout=False,
            )
        except (git.GitError, OSError) as exc:
            # Raised outside this block, so the original exception is not chained.
            message = f"{what} failed: {exc}"
        if message is not None:
            raise WorkingCopyError(scrub(message, remote.secrets))
        result = _GitResult(int(status or 0), str(stdout), str(stderr))
        if ok is not None and result.status not in ok:
            raise WorkingCopyError(
                scrub(
                    f"git {what} failed for {remote.fetch_url} "
                    f"(exit {result.status}): {_tail(result.stderr)}",
                    remote.secrets,
                )
            )
        return result


# --- module helpers ----------------------------------------------------------------


def _prune_terraform_dirs(tree: Path, tracked: Sequence[str]) -> None:
    """Keep of each `.terraform/` only what is a download cache, and only where it still fits.

    A `.terraform/` of a directory that no longer holds tracked files belonged to a
    project the new commit removed or moved: it goes, and the directories it leaves
    empty. In the others only `providers/` and `modules/` stay; the backend record
    (`terraform.tfstate`) and the selected workspace (`environment`) go, so `init`
    sets the backend up from the new commit's configuration as in a fresh clone
    instead of failing with "Backend configuration changed".
    """
    holding = {posixpath.dirname(path) for path in tracked}
    ancestors = {""}
    for directory in holding:
        while directory and directory not in ancestors:
            ancestors.add(directory)
            directory = posixpath.dirname(directory)
    orphaned: list[str] = []
    for dirpath, dirnames, _ in os.walk(tree):
        rel = os.path.relpath(dirpath, tree)
        rel = "" if rel == "." else Path(rel).as_posix()
        if TERRAFORM_DIR not in dirnames:
            continue
        dirnames.remove(TERRAFORM_DIR)  # never descend into downloaded modules
        terraform_dir = Path(dirpath) / TERRAFORM_DIR
        if terraform_dir.is_symlink():
            # Terraform never makes one: it was planted. The link goes, never its target.
            terraform_dir.unlink()
            continue
        if rel not in holding:
            _rmtree(terraform_dir)
            orphaned.append(rel)
            continue
        for entry in terraform_dir.iterdir():
            if entry.name not in KEPT_TERRAFORM_ENTRIES:
                _rmtree(entry)
    for rel in sorted(orphaned, key=lambda r: r.count("/"), reverse=True):
        while rel and rel not in ancestors:
            try:
                (tree / rel).rmdir()
            except OSError:
                break  # not empty: something else still lives there
            rel = posixpath.dirname(rel)


def _is_link_entry(entry: str) -> bool:
    """Whether a `git ls-tree` line (`<mode> <type> <object>\t<path>`) is a symlink."""
    return entry.startswith(f"{GIT_SYMLINK_MODE} ") and "\t" in entry


def _clear_stale_locks(git_dir: Path) -> None:
    """Delete git's own `*.lock` files left by a killed git (e.g. a timed-out fetch).

    Only called while holding the repository's file lock: every git process that
    writes here runs under it, so any lock file found now is left over, and would
    otherwise fail every later fetch or checkout.
    """
    candidates = list(git_dir.glob("*.lock"))
    refs = git_dir / "refs"
    if refs.is_dir():
        candidates += refs.rglob("*.lock")
    for lock_file in candidates:
        log.warning("removing stale git lock %s", lock_file)
        lock_file.unlink(missing_ok=True)


def _rmtree(path: Path) -> None:
    """Delete a tree, including read-only files (some providers and modules are).

    A symlink is unlinked, never followed: `shutil.rmtree` does not descend into links
    either, so nothing outside `path` is deleted whatever a checkout plants in it.
    """

    def make_writable_and_retry(func: Callable[[str], object], target: str, _: object) -> None:
        os.chmod(os.path.dirname(target), stat.S_IRWXU)
        if os.path.lexists(target) and not os.path.islink(target):
            os.chmod(target, stat.S_IRWXU)
        func(target)

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=make_writable_and_retry)


def _tail(text: str, lines: int = 5) -> str:
    """The last lines of git's stderr: where it says what went wrong."""
    kept = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "no output"
