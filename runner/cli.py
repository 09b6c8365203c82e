"""The `gitops-runner` command.

Exit codes (documented in the README), the same for `plan`, `drift` and `reconcile`:
  0  success: planned without changes, in sync, reconciled
  1  a project, repository or run failed
  2  bad usage or configuration (settings, repository config, unknown project, bad
     path); the message names the file and line, the variable or the path
  3  `plan`/`drift`: at least one project has changes, drift or pending changes

Every expected failure is printed as `error: ...` by one error path
(`runner/console/errors.py`); a traceback appears only with `--debug`. Start-up is
kept short (`bench/cli_startup.py`): this module imports click and nothing else at
the top; each command imports what it uses.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from runner import __version__

if TYPE_CHECKING:
    from runner.engine.local_plan import LocalSelection
    from runner.engine.services import Services
    from runner.results.model import PlanResult
    from runner.settings import Settings
    from runner.store.store import Store

# Set by the CLI server (runner/cli_server) in a command it serves: its pid, for --debug.
SERVED_BY_ENV = "GITOPS_CLI_SERVER_PID"
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CHANGES = 3

_PROGRESS = click.option(
    "--progress/--no-progress",
    default=True,
    show_default=True,
    help="Show projects as they are planned and applied (on stderr): a live table on a "
    "terminal, one line per event otherwise.",
)


class _Runner(click.Group):
    """The command group with the one error path: expected failures become `error: ...`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as error:
            state = ctx.find_object(_Context)
            if state is not None and state.debug:
                raise
            from runner.console.errors import explain

            failure = explain(error)
            click.echo(f"error: {failure.message}", err=True)
            ctx.exit(failure.exit_code)


@click.group(cls=_Runner, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__, "--version", prog_name="gitops-runner", message="%(prog)s %(version)s"
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML settings file; GITOPS_* environment variables win over it.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None, debug: bool) -> None:
    """Self-hosted GitOps runner for Terraform: plans pull requests, applies on merge,
    detects drift."""
    ctx.obj = _Context(config_file, debug)
    if ctx.invoked_subcommand not in ("serve", "worker"):  # servers configure their own
        _configure_logging(debug)
    if debug and SERVED_BY_ENV in os.environ:
        click.echo(f"debug: served by the CLI server (pid {os.environ[SERVED_BY_ENV]})", err=True)


class _Context:
    """Settings are read when a command needs them, so `--help` works with a bad env."""

    def __init__(self, config_file: Path | None, debug: bool) -> None:
        self.config_file = config_file
        self.debug = debug
        self._settings: Settings | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            from runner.settings import ensure_data_dir, load_settings

            settings = load_settings(self.config_file)
            ensure_data_dir(settings)
            self._settings = settings
        return self._settings


def _settings(ctx: click.Context) -> Settings:
    return ctx.find_object(_Context).settings()


def _services(settings: Settings, progress: Any = None) -> Services:
    """The process's `Services` (runner/wiring.py), watched by the progress display."""
    from dataclasses import replace

    from runner.wiring import build_services

    return replace(build_services(settings), progress=progress)


@cli.command()
def version() -> None:
    """Print the gitops-runner version."""
    click.echo(f"gitops-runner {__version__}")


@cli.command()
@click.option(
    "--repo",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Repository (or a directory inside one) holding the Terraform projects.",
)
@click.option("--base", help="Plan only projects changed between BASE and HEAD (git ref).")
@click.option("--head", help="Commit to plan (default: the working tree as it is).")
@click.option("-p", "--project", help="Plan only this project (by name).")
@click.option("-d", "--dir", "directory", help="Plan only the projects in this directory.")
@click.option("-w", "--workspace", help="Plan only this workspace.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON, not Markdown.")
@click.option("--parallelism", type=click.IntRange(min=1), help="Projects planned at once.")
@_PROGRESS
@click.argument("extra_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def plan(
    ctx: click.Context,
    repo: Path,
    base: str | None,
    head: str | None,
    project: str | None,
    directory: str | None,
    workspace: str | None,
    as_json: bool,
    parallelism: int | None,
    progress: bool,
    extra_args: tuple[str, ...],
) -> None:
    """Plan the projects a change touches, locally, and print the PR comment.

    The working tree is planned in its snapshot under the data dir (the one `reconcile`
    and `drift` use), never in place: nothing is written into it. Extra Terraform plan
    flags may follow `--` (e.g. `-- -var=x=1`).
    """
    from runner.engine.local_plan import ProjectFilter, select_local

    settings = _settings(ctx)
    selection = select_local(
        repo,
        base,
        head,
        ProjectFilter(project, directory, workspace),
        data_dir=settings.data_dir,
        extra_args=extra_args,
    )
    for warning in selection.config.warnings:
        click.echo(f"warning: {warning.file}:{warning.line or '?'}: {warning.message}", err=True)
    if selection.snapshot is not None:
        click.echo(f"note: {selection.snapshot.describe()}", err=True)
    results = _plan_selection(settings, selection, parallelism, progress, json_plans=as_json)
    _print_results(results, selection.commit, as_json)
    sys.exit(_plan_exit_code(results))


def _plan_selection(
    settings: Settings,
    selection: LocalSelection,
    parallelism: int | None,
    progress: bool,
    *,
    json_plans: bool,
) -> list[PlanResult]:
    """Plan under the per-state mutex reconcile and drift hold; record the runs.

    `json_plans`: read each plan's JSON form (`--json` prints the planned changes,
    policies check them). The Markdown shows Terraform's output and counts, so without it
    no `show -json` runs: a CLI plan is never applied."""
    from runner.console.interrupts import cancel_on_interrupt
    from runner.console.progress import progress_display
    from runner.drift.scan import DriftRepo
    from runner.engine.planner import PlanOptions, build_planner
    from runner.engine.project_mutex import state_key
    from runner.engine.recording import record_plan_results

    key = DriftRepo.from_url(selection.repo_url).key
    with progress_display(progress) as observer, cancel_on_interrupt() as cancel:
        services = _services(settings, observer)
        planner = services.planner
        if parallelism:
            planner = build_planner(settings, parallelism, terraform_for=services.terraform_for)
        options = PlanOptions(
            secret_values=services.secret_values,
            progress=observer,
            guard=lambda p: services.mutex.hold(state_key(key, p.dir, p.workspace)),
            read_plan_later=not json_plans,
            cancel=cancel,
        )
        results = planner.plan_all(selection.checkout, selection.targets, selection.commit, options)
    record_plan_results(services.store, repo=key, results=results, trigger="cli", command="plan")
    return results


@cli.command()
@click.option("--repo", help="Only runs of this repository: a key, URL or local path.")
@click.option("--pr", "pr_number", type=int, help="Only runs of this pull request.")
@click.option("--limit", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def runs(
    ctx: click.Context, repo: str | None, pr_number: int | None, limit: int, as_json: bool
) -> None:
    """List recorded runs, newest first."""
    from runner.console.tables import print_runs

    settings = _settings(ctx)
    store = _open_store(settings)
    key = _repo_key(repo, settings) if repo else None
    records = store.runs.list_runs(repo=key, pr_number=pr_number, limit=limit)
    if as_json:
        _echo_json(records)
        return
    print_runs(records, _repo_label(settings))


@cli.command()
@click.option("--repo", help="Only locks of this repository: a key, URL or local path.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def locks(ctx: click.Context, repo: str | None, limit: int, as_json: bool) -> None:
    """List the project locks held by pull requests and runs."""
    from runner.console.tables import print_locks

    settings = _settings(ctx)
    store = _open_store(settings)
    held = store.locks.list(_repo_key(repo, settings) if repo else None)[:limit]
    if as_json:
        _echo_json(held)
        return
    print_locks(held, _repo_label(settings))


@cli.command()
@click.option("--repo", help="Repository URL or path (default: the settings' repos, else .).")
@click.option("-p", "--project", help="Scan only this project (by name).")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@_PROGRESS
@click.pass_context
def drift(
    ctx: click.Context, repo: str | None, project: str | None, as_json: bool, progress: bool
) -> None:
    """Scan the default branch for drift now, report it (Slack, issues) and print it.

    Exit code: 0 all in sync, 3 drift or pending changes, 1 a project or repository
    failed, 2 bad usage (unknown project, no such path, invalid config).
    """
    from runner.console.progress import progress_display
    from runner.drift.reports import render_text
    from runner.drift.service import DriftService
    from runner.results.drift import DriftStatus

    settings = _settings(ctx)
    if repo is not None:
        _check_repo(repo, settings)
    target = repo if repo is not None or settings.repos else str(Path(".").resolve())
    with progress_display(progress) as observer:
        report = DriftService(_services(settings, observer)).scan(
            target, project, trigger="cli", strict=True
        )
    if as_json:
        _echo_json(report)
    else:
        click.echo(render_text(report))
    if not report.results and not report.notes:
        click.echo(f"warning: no Terraform project found in {target or 'the repos'}", err=True)
    if report.notes or report.with_status(DriftStatus.ERROR):
        sys.exit(EXIT_FAILED)
    sys.exit(EXIT_CHANGES if report.with_status(DriftStatus.DRIFT, DriftStatus.PENDING) else 0)


@cli.command()
@click.option(
    "--repo",
    help="Repository URL or path (a plain directory is snapshotted into a git repository "
    "under the data dir); default: the settings' repos.",
)
@click.option(
    "--once", is_flag=True, help="Reconcile now and exit: 0 ok, 1 a failure, 2 bad usage or config."
)
@click.option(
    "--interval",
    type=click.IntRange(min=1),
    help="Seconds between polls (default: each repository's poll_interval; 60 with --repo).",
)
@_PROGRESS
@click.pass_context
def reconcile(
    ctx: click.Context, repo: str | None, once: bool, interval: int | None, progress: bool
) -> None:
    """Pull mode: apply what changed on the default branch, now (--once) or on an interval.

    A new commit plans and applies the projects it changed since the last reconciled
    commit (every project the first time), with the PR flow's locks and run records;
    Slack hears about applies, and the commit gets a `gitops/apply` status when the
    repository is on a forge the runner has a token for. Pull mode applies with the
    locks and the apply path of the PR flow, but without PR `apply_requirements`
    (there is no pull request to approve): what is merged is applied.
    """
    from runner.console.progress import progress_display
    from runner.reconcile.reconciler import Reconciler
    from runner.reconcile.reports import render_text
    from runner.reconcile.targets import configured_targets, target_for

    settings = _settings(ctx)
    seconds = float(interval) if interval else None
    if repo:
        _check_repo(repo, settings)
    targets = (
        [target_for(repo, settings, seconds)] if repo else configured_targets(settings, seconds)
    )
    if not targets:
        raise click.UsageError("nothing to reconcile: pass --repo, or list repos: in the settings")
    if not once:
        _reconcile_forever(Reconciler(_services(settings), targets=targets))
        return
    with progress_display(progress) as observer:
        reconciler = Reconciler(_services(settings, observer), targets=targets)
        reports = [reconciler.reconcile_once(target) for target in targets]
    click.echo("\n".join(render_text(report) for report in reports))
    sys.exit(_reconcile_exit_code(reports))


def _reconcile_exit_code(reports: list[Any]) -> int:
    """2 for an invalid repository config (as `plan` and `drift`), 1 for any failure."""
    if any(report.config_invalid for report in reports):
        return EXIT_USAGE
    return 0 if all(report.ok for report in reports) else EXIT_FAILED


def _reconcile_forever(reconciler: Any) -> None:
    """Poll until Ctrl-C or SIGTERM, printing each pass that did something."""
    import signal
    import threading

    from runner.reconcile.reports import render_text

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    def show(report: Any) -> None:
        if not report.up_to_date:
            click.echo(render_text(report))

    names = ", ".join(target.name for target in reconciler.targets())
    click.echo(f"reconciling {names} (Ctrl-C stops; one process per deployment polls)")
    reconciler.run_forever(stop, on_report=show)


@cli.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run the webhook server (gunicorn) with the job workers in the same process tree."""
    from runner.store.store import prepare_store
    from runner.web.app import WebConfigError
    from runner.web.auth.startup import AuthConfigError
    from runner.web.server import check_startup, run_server
    from runner.wiring import build_web_services

    settings = _settings(ctx)
    prepare_store(settings)  # in the master, once: workers find it current
    try:
        # Webhook secrets, then sign-in (docs/dashboard.md); after the schema, since
        # stored API tokens count as sign-in.
        check_startup(settings)
    except (WebConfigError, AuthConfigError) as error:
        raise click.UsageError(str(error)) from error
    if settings.queue != "inprocess" or not settings.job_process:
        # With RQ the web processes only submit; in-process without the job process,
        # each one runs job workers.
        run_server(settings, build_web_services, web_runs_jobs=settings.queue == "inprocess")
        return
    from functools import partial

    from runner.jobs.job_process import JobProcess
    from runner.jobs.wakeup import JobWakeup
    from runner.wiring import run_job_process

    # Made before any fork: the job process and every web worker inherit it, nothing
    # else can reach it (runner/jobs/wakeup.py).
    wakeup = JobWakeup.pair()
    # Forked before gunicorn: the jobs run beside the web processes, not on their GIL.
    jobs = JobProcess(partial(run_job_process, settings, wakeup=wakeup))
    jobs.start()
    try:
        run_server(
            settings,
            partial(build_web_services, run_jobs=False, wakeup=wakeup),
            web_runs_jobs=False,
        )
    finally:
        jobs.stop()


@cli.command()
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@click.option(
    "--kinds",
    help="Run only these kinds of job, comma-separated: families pr, drift, reconcile "
    "or kinds such as drift_scan (default: all).",
)
@click.pass_context
def worker(ctx: click.Context, burst: bool, kinds: str | None) -> None:
    """Run an RQ job worker (for GITOPS_QUEUE=rq; needs GITOPS_REDIS_URL)."""
    from runner.jobs.model import select_kinds
    from runner.jobs.rq_queue import run_worker
    from runner.store.store import prepare_store
    from runner.wiring import job_registry

    try:
        chosen = select_kinds(kinds.split(",")) if kinds is not None else None
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--kinds") from None
    if chosen == ():
        raise click.BadParameter("name at least one kind", param_hint="--kinds")
    settings = _settings(ctx)
    _configure_server_logging(settings)
    prepare_store(settings)
    run_worker(settings, job_registry, burst=burst, queue_name=settings.queue_name, kinds=chosen)


def _configure_server_logging(settings: Settings) -> None:
    """A long-running process logs INFO, as text or JSON lines (GITOPS_LOG_FORMAT)."""
    import logging

    from runner.observability.logs import SERVER_TEXT_FORMAT, configure_logging

    configure_logging(
        settings.log_format,
        level=logging.INFO,
        secrets=settings.secret_values(),
        fmt=SERVER_TEXT_FORMAT,
    )


def _open_store(settings: Settings) -> Store:
    """The store for `runs`, `locks` and `token`, under the same schema rule as `serve`."""
    from runner.store.store import open_store

    return open_store(settings)


def _check_repo(spec: str, settings: Settings) -> None:
    """A `--repo` that looks like a local path must exist (exit 2 names it), unless it
    names a configured repository."""
    configured = {value for r in settings.repos for value in (r.url, r.full_name) if value}
    if spec in configured or "://" in spec or "@" in spec:
        return
    if not Path(spec).expanduser().is_dir():
        _usage_error(f"--repo {spec}: no such directory (and no configured repository)")


def _repo_key(spec: str, settings: Settings) -> str:
    """The store's key of a repository given as a key, URL or local path (relative too)."""
    from runner.drift.scan import DriftRepo
    from runner.workspace.snapshot import local_directory, needs_snapshot, snapshot_repository

    if local_directory(spec) is None:
        return spec  # a key as `runs` prints it, or a forge URL
    directory = needs_snapshot(spec)
    url = str(snapshot_repository(directory, settings.data_dir)) if directory else spec
    return DriftRepo.from_url(str(Path(url).expanduser().absolute())).key


def _repo_label(settings: Settings) -> Any:
    """How a table names a repository: a snapshot by its directory's name, not its path."""
    snapshots = (settings.data_dir / "snapshots").absolute().as_posix().strip("/") + "/"

    def label(key: str) -> str:
        if key.startswith(snapshots):
            return f"{key.rsplit('/', 1)[-1]} (snapshot)"
        return key

    return label


def _print_results(results: list[PlanResult], commit: str | None, as_json: bool) -> None:
    if as_json:
        _echo_json(results)
        return
    if not results:
        click.echo("No project is affected by this change.")
        return
    from runner.results.render import render_plan_comment

    click.echo(render_plan_comment(results, commit=commit))


def _plan_exit_code(results: list[PlanResult]) -> int:
    from runner.results.model import PlanStatus

    if any(result.status is PlanStatus.ERROR for result in results):
        return EXIT_FAILED
    if any(result.status is PlanStatus.CHANGES for result in results):
        return EXIT_CHANGES
    return 0


def _echo_json(value: Any) -> None:
    """Dataclasses (or lists of them) as indented JSON, as every `--json` prints them."""
    import json
    from dataclasses import asdict

    data = [asdict(item) for item in value] if isinstance(value, list) else asdict(value)
    click.echo(json.dumps(data, indent=2, default=str))


def _usage_error(message: str) -> NoReturn:
    from runner.console.errors import CliError

    raise CliError(message, EXIT_USAGE)


def _configure_logging(debug: bool) -> None:
    """Warnings as one line each; tracebacks only with `--debug`.

    An exception logged where it is caught (a repository that failed to scan) is also
    in the command's report, so without `--debug` its record is dropped rather than
    printed twice.
    """
    import logging

    from runner.observability.logs import configure_logging

    level = logging.INFO if debug else logging.WARNING
    configure_logging("text", level=level, quiet_tracebacks=not debug)


@cli.group("github-app")
def github_app() -> None:
    """Running as a GitHub App instead of with a token (docs/forges.md)."""


@github_app.command("manifest")
@click.option("--name", default="gitops-runner", show_default=True, help="The App's name.")
@click.option(
    "--url",
    "public_url",
    help="Where GitHub reaches the runner (webhooks go to URL/events); default: GITOPS_PUBLIC_URL.",
)
@click.pass_context
def github_app_manifest(ctx: click.Context, name: str, public_url: str | None) -> None:
    """Print the App manifest (JSON) with the permissions and events the runner needs."""
    import json

    from runner.forge.github_manifest import app_manifest

    url = public_url if public_url is not None else _settings(ctx).public_url
    click.echo(json.dumps(app_manifest(name, url), indent=2))


@cli.group()
def policy() -> None:
    """Rego policy sets: test them before they ship, check a plan as the server would
    (docs/policies.md)."""


@policy.command("test")
@click.option(
    "--policies",
    "directory",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=Path("policies"),
    show_default=True,
    help="The policy set: a directory of .rego files.",
)
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A `terraform show -json` plan to check; without it, run the set's tests.",
)
@click.option("-p", "--project", default="default", help="Project name policies see.")
@click.option("-w", "--workspace", default="default", help="Workspace policies see.")
@click.option("--kind", type=click.Choice(["pr", "merge", "drift", "reconcile"]), default="pr")
def policy_test(
    directory: Path, plan_file: Path | None, project: str, workspace: str, kind: str
) -> None:
    """Check a plan against a policy set, or run the set's tests; prints each result."""
    from runner.policies.local import check_plan_file, run_set_tests

    if plan_file is None:
        ok = run_set_tests(directory, click.echo)
    else:
        ok = check_plan_file(directory, plan_file, project, workspace, kind, click.echo)
    sys.exit(0 if ok else 1)


@policy.command("check")
@click.option(
    "--repo",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Repository (or a directory inside one) holding the project.",
)
@click.option("-p", "--project", required=True, help="The project to plan and check (by name).")
@click.option("-w", "--workspace", help="Only this workspace of the project.")
@click.option(
    "--kind",
    type=click.Choice(["pr", "merge", "drift", "reconcile"]),
    default="pr",
    show_default=True,
    help="Why the plan is made, as policies read it in `input.run.kind`.",
)
@_PROGRESS
@click.pass_context
def policy_check(
    ctx: click.Context,
    repo: Path,
    project: str,
    workspace: str | None,
    kind: str,
    progress: bool,
) -> None:
    """Plan a project locally, as `plan` does, and check it against the server's policy sets.

    The sets are the settings' `policy_sets`; the repository's config on disk chooses
    optional ones and gives policy data. Prints the plan comment with its policy
    section. Exit 0 passed (warnings allowed), 1 a policy or the plan failed.
    """
    from runner.engine.local_plan import ProjectFilter, select_local
    from runner.engine.planner import kept_plan_documents
    from runner.policies.engine import build_policy_engine
    from runner.policies.input import RunContext
    from runner.policies.local import check_planned
    from runner.results.policy import PolicyKind
    from runner.results.render import render_plan_comment

    settings = _settings(ctx)
    engine = build_policy_engine(settings)
    if not engine.enabled:
        _usage_error("no policy sets are configured: set `policy_sets` (GITOPS_POLICY_SETS)")
    wanted = ProjectFilter(project, None, workspace)
    selection = select_local(repo, None, None, wanted, data_dir=settings.data_dir)
    if selection.snapshot is not None:
        click.echo(f"note: {selection.snapshot.describe()}", err=True)
    results = _plan_selection(settings, selection, None, progress, json_plans=True)
    # Locally there is no PR: `run.branch` and `run.default_branch` are unknown (null),
    # so a branch-sensitive policy judges the plan as if it landed on the default branch.
    context = RunContext(kind=PolicyKind(kind), repository=selection.repo_url, trigger="cli")
    planned = [(t.project, r) for t, r in zip(selection.targets, results, strict=True)]
    checks = check_planned(engine, kept_plan_documents(settings), planned, context)

    click.echo(render_plan_comment(results, commit=selection.commit, policies=checks))
    if not checks:
        click.echo("note: no plan with changes: nothing for policies to check", err=True)
    failed = any(not check.passed for check in checks.values())
    sys.exit(EXIT_FAILED if failed or _plan_exit_code(results) == EXIT_FAILED else 0)


@cli.group()
def db() -> None:
    """The database schema: migrations run as a deployment step (docs/operations.md)."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Migrate the database to the schema this version needs (safe to run twice, or in
    several processes at once)."""
    from runner.store.db import SchemaOutOfDate, migrate, schema_state

    url = _settings(ctx).resolved_database_url
    before = schema_state(url)
    if not before.known:  # migrated by a newer version: never downgrade implicitly
        raise SchemaOutOfDate(before)
    migrate(url)
    after = schema_state(url)
    if before.current == after.current:
        click.echo(f"already up to date at revision {after.current}")
    else:
        click.echo(f"upgraded from {before.current or 'an empty database'} to {after.current}")


@db.command("current")
@click.pass_context
def db_current(ctx: click.Context) -> None:
    """Print the schema revision; exit 3 when `db upgrade` has work to do."""
    from runner.store.db import schema_state

    state = schema_state(_settings(ctx).resolved_database_url)
    click.echo(f"current: {state.current or 'none'}  head: {state.head}")
    if not state.up_to_date:
        hint = "; run `gitops-runner db upgrade`" if state.known else ""
        click.echo(state.describe() + hint)
        sys.exit(EXIT_CHANGES)


@cli.group()
def token() -> None:
    """API tokens for scripts and automation: `Authorization: Bearer <token>`
    (docs/dashboard.md#sign-in)."""


@token.command("create")
@click.option("--name", required=True, help="Who or what uses it (shown by `token list`).")
@click.option(
    "--role", type=click.Choice(["viewer", "operator"]), default="viewer", show_default=True
)
@click.option("--expires-in", help="Lifetime such as 90d, 12h or 30m (default: no expiry).")
@click.pass_context
def token_create(ctx: click.Context, name: str, role: str, expires_in: str | None) -> None:
    """Create a token and print its secret on stdout, once: only its hash is stored."""
    from runner.console.tokens import parse_lifetime

    lifetime = parse_lifetime(expires_in) if expires_in else None
    new = _open_store(_settings(ctx)).tokens.create(name, role, lifetime)
    click.echo(new.secret)
    click.echo(f"token {new.record.id} ({new.record.name}, {role}): copy it now, it is not "
               "shown again", err=True)  # fmt: skip


@token.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def token_list(ctx: click.Context, as_json: bool) -> None:
    """Every token with its role, use and state (never a secret)."""
    from runner.console.tokens import print_tokens

    records = _open_store(_settings(ctx)).tokens.list()
    if as_json:
        _echo_json(records)
    else:
        print_tokens(records)


@token.command("revoke")
@click.argument("token_id", type=int)
@click.pass_context
def token_revoke(ctx: click.Context, token_id: int) -> None:
    """Revoke a token by its id (`token list`); it stops working at once."""
    record = _open_store(_settings(ctx)).tokens.revoke(token_id)
    if record is None:
        _usage_error(f"no token {token_id} (see `gitops-runner token list`)")
    click.echo(f"revoked token {record.id} ({record.name})")


def main() -> None:
    """Console-script entry point."""
    try:
        cli(prog_name="gitops-runner")
    finally:
        # At exit the interpreter's collector would walk every object the imports made,
        # ~0.25 s after a `plan`, to free memory the OS takes back anyway. Exit handlers
        # and module teardown still run.
        gc.disable()
        gc.freeze()
