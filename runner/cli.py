"""The `gitops-runner` command.

Exit codes (documented in the README):
  0  success (for `plan`: every project planned, no changes)
  1  a project failed to plan / the command failed
  2  bad usage or an invalid repository config (the message names file and line)
  3  `plan` succeeded and at least one project has changes
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import click
from git import BadName

from runner import __version__
from runner.config.errors import ConfigError
from runner.engine.local_plan import ProjectFilter, select_local
from runner.engine.planner import PlanOptions, build_planner
from runner.engine.recording import record_plan_results
from runner.projects.changes import ChangeDetectionError
from runner.projects.detection import ProjectSelectionError
from runner.results.model import PlanResult, PlanStatus
from runner.results.render import render_plan_comment, summary_line
from runner.settings import Settings, load_settings
from runner.store.store import Store

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CHANGES = 3


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML settings file; GITOPS_* environment variables win over it.",
)
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None) -> None:
    """Self-hosted GitOps runner for Terraform: plans pull requests, applies on merge,
    detects drift."""
    ctx.obj = _LazySettings(config_file)


class _LazySettings:
    """Settings are read when a command needs them, so `--help` works with a bad env."""

    def __init__(self, config_file: Path | None) -> None:
        self._config_file = config_file
        self._settings: Settings | None = None

    def get(self) -> Settings:
        if self._settings is None:
            try:
                self._settings = load_settings(self._config_file)
            except (ValueError, FileNotFoundError) as error:
                raise click.UsageError(f"invalid settings: {error}") from error
        return self._settings


def _settings(ctx: click.Context) -> Settings:
    return ctx.find_object(_LazySettings).get()


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
    extra_args: tuple[str, ...],
) -> None:
    """Plan the projects a change touches, locally, and print the PR comment.

    Extra Terraform plan flags may follow `--` (e.g. `-- -var=x=1`).
    """
    settings = _settings(ctx)
    try:
        selection = select_local(
            repo,
            base,
            head,
            ProjectFilter(project, directory, workspace),
            scratch_dir=settings.data_dir / "cli-checkouts",
            extra_args=extra_args,
        )
    except (ConfigError, ProjectSelectionError, ChangeDetectionError, BadName) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(EXIT_USAGE)

    for warning in selection.config.warnings:
        click.echo(f"warning: {warning.file}:{warning.line or '?'}: {warning.message}", err=True)
    planner = build_planner(settings, parallelism=parallelism)
    results = planner.plan_all(
        selection.checkout,
        selection.targets,
        selection.commit,
        PlanOptions(secret_values=settings.secret_values()),
    )
    store = Store.open(settings.resolved_database_url)
    record_plan_results(
        store, repo=str(repo.resolve()), results=results, trigger="cli", command="plan"
    )
    _print_results(results, selection.commit, as_json)
    sys.exit(_plan_exit_code(results))


@cli.command()
@click.option("--repo", help="Only runs of this repository (e.g. github.com/acme/infra).")
@click.option("--pr", "pr_number", type=int, help="Only runs of this pull request.")
@click.option("--limit", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def runs(
    ctx: click.Context, repo: str | None, pr_number: int | None, limit: int, as_json: bool
) -> None:
    """List recorded runs, newest first."""
    store = Store.open(_settings(ctx).resolved_database_url)
    records = store.runs.list_runs(repo=repo, pr_number=pr_number, limit=limit)
    if as_json:
        click.echo(json.dumps([asdict(r) for r in records], indent=2, default=str))
        return
    for run in records:
        counts = summary_line(run.summary) if run.summary else ""
        pr = f"#{run.pr_number}" if run.pr_number else "-"
        click.echo(
            f"{run.id:>5}  {run.started_at:%Y-%m-%d %H:%M:%S}  {run.status:<11} "
            f"{run.command:<6} {run.trigger:<9} {run.repo} {pr} {run.project} "
            f"({run.workspace}) {(run.commit_sha or '')[:7]} {counts}"
        )


@cli.command()
@click.option("--repo", help="Only locks of this repository.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def locks(ctx: click.Context, repo: str | None, as_json: bool) -> None:
    """List the project locks held by pull requests."""
    store = Store.open(_settings(ctx).resolved_database_url)
    held = store.locks.list(repo)
    if as_json:
        click.echo(json.dumps([asdict(lock) for lock in held], indent=2, default=str))
        return
    if not held:
        click.echo("No locks are held.")
    for lock in held:
        owner = f"PR #{lock.owner_pr}" if lock.owner_pr else f"run {lock.run_id}"
        click.echo(
            f"{lock.repo} {lock.dir} ({lock.workspace}) held by {owner} "
            f"since {lock.since:%Y-%m-%d %H:%M:%S} UTC"
        )


@cli.command()
@click.option("--repo", help="Repository URL or path (default: the settings' repos, else .).")
@click.option("-p", "--project", help="Scan only this project (by name).")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@click.pass_context
def drift(ctx: click.Context, repo: str | None, project: str | None, as_json: bool) -> None:
    """Scan the default branch for drift now, report it (Slack, issues) and print it.

    Exit code: 0 all in sync, 1 a project or repository failed, 3 drift or pending changes.
    """
    from runner.drift.reports import render_text
    from runner.drift.service import DriftService
    from runner.results.drift import DriftStatus
    from runner.wiring import build_services

    settings = _settings(ctx)
    store = Store.open(settings.resolved_database_url)
    service = DriftService(build_services(settings, store))
    target = repo if repo is not None or settings.repos else str(Path(".").resolve())
    report = service.scan(target, project, trigger="cli")
    if as_json:
        click.echo(json.dumps(asdict(report), indent=2, default=str))
    else:
        click.echo(render_text(report))
    if report.notes or report.with_status(DriftStatus.ERROR):
        sys.exit(EXIT_FAILED)
    sys.exit(EXIT_CHANGES if report.with_status(DriftStatus.DRIFT, DriftStatus.PENDING) else 0)


@cli.command()
@click.option(
    "--repo",
    help="Repository URL or path (a plain directory is snapshotted into a git repository "
    "under the data dir); default: the settings' repos.",
)
@click.option("--once", is_flag=True, help="Reconcile now and exit: 0 ok, 1 a failure.")
@click.option(
    "--interval",
    type=click.IntRange(min=1),
    help="Seconds between polls (default: each repository's poll_interval; 60 with --repo).",
)
@click.pass_context
def reconcile(ctx: click.Context, repo: str | None, once: bool, interval: int | None) -> None:
    """Pull mode: apply what changed on the default branch, now (--once) or on an interval.

    A new commit plans and applies the projects it changed since the last reconciled
    commit (every project the first time), with the PR flow's locks and run records;
    Slack hears about applies, and the commit gets a `gitops/apply` status when the
    repository is on a forge the runner has a token for.
    """
    import signal
    import threading

    from runner.reconcile.model import ReconcileReport
    from runner.reconcile.reconciler import Reconciler
    from runner.reconcile.reports import render_text
    from runner.reconcile.targets import configured_targets, target_for
    from runner.wiring import build_services

    settings = _settings(ctx)
    seconds = float(interval) if interval else None
    targets = (
        [target_for(repo, settings, seconds)] if repo else configured_targets(settings, seconds)
    )
    if not targets:
        raise click.UsageError("nothing to reconcile: pass --repo, or list repos: in the settings")
    reconciler = Reconciler(build_services(settings), targets=targets)
    if once:
        reports = [reconciler.reconcile_once(target) for target in targets]
        click.echo("\n".join(render_text(report) for report in reports))
        sys.exit(0 if all(report.ok for report in reports) else EXIT_FAILED)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())

    def show(report: ReconcileReport) -> None:
        if not report.up_to_date:
            click.echo(render_text(report))

    names = ", ".join(target.name for target in targets)
    click.echo(f"reconciling {names} (Ctrl-C stops; one process per deployment polls)")
    reconciler.run_forever(stop, on_report=show)


@cli.command()
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run the webhook server (gunicorn) with the job workers in the same process tree."""
    from runner.web.app import WebConfigError, check_webhook_secrets
    from runner.web.server import run_server
    from runner.wiring import build_web_services

    settings = _settings(ctx)
    try:
        check_webhook_secrets(settings)
    except WebConfigError as error:
        raise click.UsageError(str(error)) from error
    run_server(settings, build_web_services)


@cli.command()
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@click.pass_context
def worker(ctx: click.Context, burst: bool) -> None:
    """Run an RQ job worker (for GITOPS_QUEUE=rq; needs GITOPS_REDIS_URL)."""
    from runner.jobs.rq_queue import run_worker
    from runner.wiring import pull_request_flow_handler

    run_worker(_settings(ctx), pull_request_flow_handler, burst=burst)


def _print_results(results: list[PlanResult], commit: str | None, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps([asdict(result) for result in results], indent=2, default=str))
        return
    if not results:
        click.echo("No project is affected by this change.")
        return
    click.echo(render_plan_comment(results, commit=commit))


def _plan_exit_code(results: list[PlanResult]) -> int:
    if any(result.status is PlanStatus.ERROR for result in results):
        return EXIT_FAILED
    if any(result.status is PlanStatus.CHANGES for result in results):
        return EXIT_CHANGES
    return 0


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="gitops-runner")
