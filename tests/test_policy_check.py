"""`gitops-runner policy check`: an author plans a project and sees what the server's
policies would say, on real plans of the Python files provider (replace and delete)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.drift_world import World, make_world

SHIPPED = Path(__file__).resolve().parents[1] / "policies"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Two applied projects, one named like production; each then moves its file, which
    the provider can only do by replacing it (`path` requires replacement)."""
    monkeypatch = pytest.MonkeyPatch()
    w = make_world(
        tmp_path_factory.mktemp("policy"), monkeypatch, {"prod-db": "v1", "staging": "v1"}
    )
    for name in ("prod-db", "staging"):
        main_tf = w.repo.path / name / "main.tf"
        main_tf.write_text(main_tf.read_text().replace(f"{name}.txt", f"{name}-moved.txt"))
    yield w
    w.store.close()
    monkeypatch.undo()


def check(world: World, *args: str, **env: str):
    """`gitops-runner policy check` against the shipped set, as the server is configured."""
    sets = json.dumps([{"name": "default", "path": str(SHIPPED), "owners": ["alice"]}])
    return run_cli(
        "policy",
        "check",
        "--repo",
        str(world.repo.path),
        "--no-progress",
        *args,
        data_dir=world.root / "cli-data",
        **({"GITOPS_POLICY_SETS": sets} | env),
    )


def test_replacing_a_file_in_production_fails_with_the_owners_to_ask(world: World) -> None:
    result = check(world, "-p", "prod-db")

    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Policies: failed" in result.stdout
    assert "files\\_file.f would be deleted or replaced in production (prod-db)" in result.stdout
    assert "@alice" in result.stdout
    assert world.file("prod-db").read_text() == "v1"  # checked, never applied


def test_the_same_replace_elsewhere_only_warns(world: World) -> None:
    result = check(world, "-p", "staging", "--kind", "drift")

    assert result.returncode == 0, (result.stdout, result.stderr)
    assert "**Policies:** passed (`default`)" in result.stdout
    assert "⚠ `default`: files\\_file.f would be deleted or replaced" in result.stdout


def test_a_deleted_resource_in_production_fails_too(world: World, tmp_path: Path) -> None:
    main_tf = world.repo.path / "prod-db" / "main.tf"
    kept = main_tf.read_text()
    main_tf.write_text(kept.split('resource "files_file"')[0])  # the resource is removed
    try:
        result = check(world, "-p", "prod-db")
    finally:
        main_tf.write_text(kept)

    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "would be deleted or replaced in production" in result.stdout


def test_without_policy_sets_there_is_nothing_to_check(world: World) -> None:
    result = check(world, "-p", "staging", GITOPS_POLICY_SETS="[]")

    assert result.returncode == 2
    assert "error: no policy sets are configured" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_project_is_a_usage_error(world: World) -> None:
    result = check(world, "-p", "nope")

    assert result.returncode == 2
    assert "error: " in result.stderr and "nope" in result.stderr
