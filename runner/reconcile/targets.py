"""Which repositories the reconciler polls: the settings' `repos:`, or one given by hand."""

from __future__ import annotations

from runner.drift.scan import DriftRepo
from runner.reconcile.model import PollTarget
from runner.settings import PolledRepo, Settings
from runner.workspace.snapshot import needs_snapshot, snapshot_repository

DEFAULT_INTERVAL_S = 60.0


def configured_targets(settings: Settings, interval_s: float | None = None) -> list[PollTarget]:
    """The repositories of the server config that have a `poll_interval` (or all, with an
    explicit `interval_s`), each on its own interval."""
    return [
        _from_setting(entry, settings, interval_s)
        for entry in settings.repos
        if interval_s is not None or entry.poll_interval is not None
    ]


def target_for(spec: str, settings: Settings, interval_s: float | None = None) -> PollTarget:
    """A configured repository named by URL, key or full name; else a URL or path as is.

    A plain directory (not a git repository) is polled through its snapshot.
    """
    for entry in settings.repos:
        target = _from_setting(entry, settings, interval_s)
        if spec in (entry.url, target.repo.key, target.repo.full_name):
            return target
    return _target(spec, settings, interval_s or DEFAULT_INTERVAL_S)


def _from_setting(entry: PolledRepo, settings: Settings, interval_s: float | None) -> PollTarget:
    return _target(
        entry.url,
        settings,
        interval_s or float(entry.poll_interval or DEFAULT_INTERVAL_S),
        branch=entry.branch,
        full_name=entry.full_name,
        forge=entry.forge,
    )


def _target(
    spec: str,
    settings: Settings,
    interval_s: float,
    *,
    branch: str | None = None,
    full_name: str | None = None,
    forge: str | None = None,
) -> PollTarget:
    directory = needs_snapshot(spec)
    url = spec if directory is None else str(snapshot_repository(directory, settings.data_dir))
    repo = DriftRepo.from_url(
        url,
        branch=branch,
        full_name=full_name,
        forge=forge,  # type: ignore[arg-type]
        forge_hosts=settings.forge_hosts(),
    )
    label = spec if directory is not None else ""
    return PollTarget(repo=repo, interval_s=interval_s, label=label, snapshot_of=directory)
