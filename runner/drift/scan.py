"""Detection: plan the default branch head of a repository and classify each project.

Plans go through the same Planner as pull requests (`-detailed-exitcode -lock=false
-out`), so a drift plan looks like any other plan. The JSON plan tells drift
(`resource_drift`: objects changed outside Terraform) from pending (the branch has
changes nobody applied); a failed plan is an error, never "no drift".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from filelock import FileLock

from runner.config.loader import load_repo_config
from runner.config.model import ProjectConfig, RepoConfig
from runner.config.server_config import server_rules
from runner.engine.planner import Planner, PlanOptions, PlanTarget
from runner.engine.progress import ProgressObserver
from runner.engine.project_mutex import ProjectMutex, state_key
from runner.engine.recording import record_plan_result
from runner.events.model import ForgeKind, RepoRef, canonical_repo_key
from runner.forge.base import Forge, ForgeNotConfigured
from runner.results.drift import DriftResult, DriftStatus
from runner.results.model import DriftedResource, PlanResult, PlanStatus
from runner.store.drift import DriftStore
from runner.store.models import utcnow
from runner.store.store import Store
from runner.workspace.working_copy import (
    LOCAL_HOST_DIR,
    WorkingCopies,
    WorkingCopyError,
    repo_location,
)

DRIFT_TREE_KEY = "drift"
DEFAULT_BRANCHES = ("main", "master")
_DRIFT_LOCK = "drift.lock"
_PUBLIC_HOSTS = {"github": "github.com", "gitlab": "gitlab.com"}


@dataclass(frozen=True)
class DriftRepo:
    """A repository to scan: where to fetch it, what locks it by, where it lives on a forge."""

    url: str  # clone URL, file:// URL or local path
    key: str  # what project locks are scoped by (RepoRef.key for forge repositories)
    branch: str | None = None  # None: main, else master
    full_name: str | None = None  # "acme/infra" on the forge, for issues and statuses
    forge: ForgeKind | None = None

    forge_host: str | None = None  # "github.com", "ghe.example": where full_name lives

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        branch: str | None = None,
        full_name: str | None = None,
        forge: ForgeKind | None = None,
        forge_hosts: Mapping[str, str] | None = None,
    ) -> DriftRepo:
        """Key the repository the way the PR flow does: `host/owner/name`, lower-cased.

        With a `full_name` the repository is the forge's (`forge_hosts[forge]/full_name`)
        whichever URL it is fetched from (a mirror, a file:// URL), so a PR apply and a
        drift correction of the same state take the same lock and mutex.
        """
        hosts = {**_PUBLIC_HOSTS, **(forge_hosts or {})}
        location = repo_location(url)
        hosted_on = _forge_of_host(location.host, hosts)
        if full_name is None and hosted_on is not None:
            full_name = f"{location.owner}/{location.name}"
            forge = forge or hosted_on
            hosts[forge] = location.host
        if full_name is not None:
            forge = forge or "github"
            host = hosts[forge]
            key = canonical_repo_key(host, full_name)
            return cls(url, key, branch, full_name, forge, forge_host=host)
        host = "" if location.host == LOCAL_HOST_DIR else location.host
        key = canonical_repo_key(host, f"{location.owner}/{location.name}")
        return cls(url=url, key=key, branch=branch)

    @property
    def name(self) -> str:
        """How people call the repository in reports."""
        return self.full_name or self.key

    def forge_ref(self) -> RepoRef | None:
        """The forge's view of the repository, when it has one (issues, statuses)."""
        if self.full_name is None or self.forge is None:
            return None
        host = self.forge_host or _PUBLIC_HOSTS[self.forge]
        return RepoRef(
            forge=self.forge,
            full_name=self.full_name,
            clone_url=self.url,
            html_url=f"https://{host}/{self.full_name}",
            default_branch=self.branch or DEFAULT_BRANCHES[0],
        )


def _forge_of_host(host: str, hosts: Mapping[str, str]) -> ForgeKind | None:
    """The forge a clone URL's host belongs to: a configured forge host (a self-managed
    GitLab, GitHub Enterprise), else a host named like the public ones."""
    for kind, forge_host in hosts.items():
        if host and host == forge_host:
            return kind  # type: ignore[return-value]
    if host.startswith(("github.", "gitlab.")):
        return "github" if host.startswith("github.") else "gitlab"
    return None


ForgeFor = Callable[[DriftRepo], Forge | None]


def repo_forge(forge_for: Callable[[str], Forge]) -> ForgeFor:
    """The forge a configured repository lives on (issues, statuses), if it is known
    and that forge is configured; None otherwise: such reports are simply skipped."""

    def forge_of(repo: DriftRepo) -> Forge | None:
        if repo.forge is None or repo.full_name is None:
            return None
        try:
            return forge_for(repo.forge)
        except ForgeNotConfigured:
            return None

    return forge_of


def no_default_branch(repo: DriftRepo, errors: Sequence[str]) -> str:
    """Why no default branch was found; each distinct git error once (main and master
    usually fail the same way)."""
    return f"no default branch found in {repo.name}: {'; '.join(dict.fromkeys(errors))}"


@dataclass
class ScanSession:
    """One repository checked out at its default branch head, held for scan + correction."""

    repo: DriftRepo
    tree: Path
    commit: str
    config: RepoConfig
    plans: dict[str, PlanResult] = field(default_factory=dict)  # by project name

    def projects(self, names: Sequence[str] | None = None) -> list[ProjectConfig]:
        if names is None:
            return list(self.config.projects)
        wanted = set(names)
        return [p for p in self.config.projects if p.name in wanted]


class DriftScanner:
    """Checks repositories out and plans their projects; stores nothing but runs."""

    def __init__(
        self,
        planner: Planner,
        working_copies: WorkingCopies,
        store: Store,
        mutex: ProjectMutex,
        *,
        secret_values: tuple[str, ...] = (),
        progress: ProgressObserver | None = None,
        repo_config: Path | None = None,
    ) -> None:
        self._planner = planner
        # GITOPS_REPO_CONFIG: when set, scans read configs under the server's rules.
        self._repo_config = repo_config
        self._progress = progress
        self._copies = working_copies
        self._store = store
        self._mutex = mutex
        self._drift = DriftStore(store)
        self._secret_values = secret_values

    def head(self, repo: DriftRepo) -> tuple[str, str]:
        """(branch, sha) of the default branch head, fetched now."""
        errors: list[str] = []
        for branch in (repo.branch,) if repo.branch else DEFAULT_BRANCHES:
            try:
                return branch, self._copies.resolve(repo.url, branch)
            except WorkingCopyError as error:  # the next candidate may exist
                errors.append(str(error))
        raise LookupError(no_default_branch(repo, errors))

    @contextmanager
    def session(self, repo: DriftRepo) -> Iterator[ScanSession]:
        """Check out the default branch head; scans of one repository queue on a file lock.

        One persistent tree per repository keeps `.terraform/providers` between scans,
        so `terraform init` is a quick check instead of a download.
        """
        lock_dir = self._copies.repo_dir(repo.url)
        lock_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock_dir / _DRIFT_LOCK)):
            _, commit = self.head(repo)
            tree = self._copies.checkout(repo.url, DRIFT_TREE_KEY, commit)
            rules = None
            if self._repo_config is not None:
                rules = server_rules(self._repo_config, repo.key)
            yield ScanSession(repo, tree, commit, load_repo_config(tree, rules=rules))

    def scan(
        self,
        session: ScanSession,
        projects: Sequence[ProjectConfig],
        *,
        trigger: str = "schedule",
    ) -> list[DriftResult]:
        """Plan `projects` at the session's commit and classify them (busy ones unplanned)."""
        busy = {p.name: why for p in projects if (why := self.busy_reason(session.repo, p))}
        targets = [PlanTarget(p, "drift scan") for p in projects if p.name not in busy]
        plans = self._planner.plan_all(
            session.tree,
            targets,
            session.commit,
            PlanOptions(
                lock=False,
                secret_values=self._secret_values,
                progress=self._progress,
                # Never beside an apply of the same state: the plan would read it half-written.
                guard=lambda project: self._mutex.hold(
                    state_key(session.repo.key, project.dir, project.workspace)
                ),
            ),
        )
        by_name = {plan.project: plan for plan in plans}
        session.plans.update(by_name)
        results = []
        for project in projects:
            if project.name in busy:
                results.append(_busy(session, project, busy[project.name]))
                continue
            plan = by_name[project.name]
            run_id = record_plan_result(
                self._store, plan, repo=session.repo.key, trigger=trigger, command="drift"
            )
            results.append(replace(classify(plan, session.repo.key), plan_run_id=run_id))
        return results

    def busy_reason(self, repo: DriftRepo, project: ProjectConfig) -> str:
        """Why a project must not be planned now ("" when it may be)."""
        lock = self._store.locks.get(repo.key, project.dir, project.workspace)
        if lock is not None:
            owner = f"PR #{lock.owner_pr}" if lock.owner_pr is not None else "another run"
            return f"locked by {owner}"
        if self._drift.apply_running(repo.key, project.dir, project.workspace):
            return "an apply is in progress"
        return ""


def classify(plan: PlanResult, repo_key: str) -> DriftResult:
    """Turn one plan into a drift result: exit 0 in sync, 2 drift or pending, else error."""
    base = DriftResult(
        repo=repo_key,
        project=plan.project,
        dir=plan.dir,
        workspace=plan.workspace,
        status=DriftStatus.ERROR,
        commit=plan.commit,
        summary=plan.summary,
        plan_checksum=plan.plan_checksum,
        plan_path=plan.plan_path,
        log_path=plan.log_path,
        scanned_at=utcnow(),
    )
    if plan.status is PlanStatus.ERROR:
        return replace(base, error=plan.error or "the plan failed")
    if plan.status is PlanStatus.NO_CHANGES:
        return replace(base, status=DriftStatus.IN_SYNC)
    drifted = tuple(d for d in plan.drift if isinstance(d, DriftedResource))
    status = DriftStatus.DRIFT if plan.drift else DriftStatus.PENDING
    return replace(base, status=status, drifted=drifted, changes=plan.changes)


def _busy(session: ScanSession, project: ProjectConfig, reason: str) -> DriftResult:
    return DriftResult(
        repo=session.repo.key,
        project=project.name,
        dir=project.dir,
        workspace=project.workspace,
        status=DriftStatus.BUSY,
        commit=session.commit,
        error=reason,
        scanned_at=utcnow(),
    )
