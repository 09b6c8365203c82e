"""Drift detection end to end: real git, real Terraform, a real provider, a real store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest

from runner.drift.scan import DriftRepo
from runner.events.model import ForgeKind
from runner.results.drift import DriftStatus
from runner.settings import PolledRepo
from runner.store.locks import LockOwner
from tests.support.drift_world import World, make_world


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    w = make_world(tmp_path, monkeypatch, {"alpha": "a", "beta": "b"})
    yield w
    w.store.close()


def _by_name(report):  # type: ignore[no-untyped-def]
    return {r.project: r for r in report.results}


def test_in_sync_after_apply(world: World) -> None:
    report = world.service().scan(world.drift_repo())
    statuses = [r.status for r in report.results]
    assert statuses == [DriftStatus.IN_SYNC, DriftStatus.IN_SYNC], [r.error for r in report.results]
    assert report.all_in_sync


def test_out_of_band_edit_is_drift_with_the_changed_attribute(world: World) -> None:
    world.file("beta").write_text("edited by hand")
    report = world.service().scan(world.drift_repo())
    results = _by_name(report)
    assert results["alpha"].status is DriftStatus.IN_SYNC
    beta = results["beta"]
    assert beta.status is DriftStatus.DRIFT
    assert [(d.address, d.changed_attributes) for d in beta.drifted] == [
        ("files_file.f", ("content",))
    ]
    assert beta.plan_checksum and beta.id is not None


def test_unapplied_commit_is_pending_not_drift(world: World) -> None:
    world.write_project("alpha", "a2")
    world.repo.commit("change alpha, never applied")
    results = _by_name(world.service().scan(world.drift_repo()))
    assert results["alpha"].status is DriftStatus.PENDING
    assert results["alpha"].summary.change == 1
    assert results["beta"].status is DriftStatus.IN_SYNC


def test_broken_config_is_an_error_not_no_drift(world: World) -> None:
    world.repo.write({"alpha/broken.tf": 'resource "files_file" "g" {\n'})
    world.repo.commit("syntax error")
    report = world.service().scan(world.drift_repo())
    alpha = _by_name(report)["alpha"]
    assert alpha.status is DriftStatus.ERROR
    assert alpha.error
    assert not report.all_in_sync
    assert report.counts()["drift"] == 0


def test_project_locked_by_a_pr_is_busy(world: World) -> None:
    repo = world.drift_repo()
    world.store.locks.acquire(repo.key, "alpha", "default", LockOwner(pr_number=7))
    results = _by_name(world.service().scan(repo))
    assert results["alpha"].status is DriftStatus.BUSY
    assert "PR #7" in results["alpha"].error
    assert results["beta"].status is DriftStatus.IN_SYNC


def test_history_survives_a_restart(world: World) -> None:
    world.file("alpha").write_text("x")
    world.service().scan(world.drift_repo(), project="alpha")
    world.store.close()
    from runner.store.store import Store

    reopened = Store.open(world.settings.resolved_database_url)
    world.store = reopened
    latest = world.service().latest()
    assert [(r.project, r.status) for r in latest] == [("alpha", DriftStatus.DRIFT)]
    assert latest[0].drifted[0].changed_attributes == ("content",)


def test_cli_drift_prints_the_report_and_exits_3_on_drift(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from runner.cli import cli

    world.file("alpha").write_text("edited")
    monkeypatch.setenv("GITOPS_DATA_DIR", str(world.settings.data_dir))
    monkeypatch.setenv("GITOPS_PARALLELISM", "2")
    result = CliRunner().invoke(cli, ["drift", "--repo", str(world.repo.path), "-p", "alpha"])
    assert result.exit_code == 3, result.output
    assert "drift    " in result.output and "files_file.f" in result.output


def test_the_settings_name_the_same_forge_kinds_as_the_repositories_they_configure() -> None:
    # `runner.settings` is the bottom layer and cannot import `ForgeKind`: it spells it out.
    annotation = PolledRepo.model_fields["forge"].annotation
    assert set(get_args(get_args(annotation)[0])) == set(get_args(ForgeKind))


def test_a_repo_on_a_self_managed_forge_is_keyed_like_its_merge_requests() -> None:
    """`repos:` naming a self-managed GitLab by URL gets the PR flow's lock key."""
    hosts = {"github": "github.com", "gitlab": "code.acme.com"}
    repo = DriftRepo.from_url("https://code.acme.com/Team/Infra.git", forge_hosts=hosts)
    assert (repo.key, repo.forge, repo.full_name) == (
        "code.acme.com/team/infra",
        "gitlab",
        "Team/Infra",
    )
    local = DriftRepo.from_url("/srv/mirror/infra", forge="gitlab", forge_hosts=hosts)
    assert local.full_name is None  # a path is not a forge repository, whatever `forge` says
