"""Auto-correction with its safety rules, and the scheduler firing once with two workers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from runner.drift.autocorrect import in_window
from runner.drift.scheduler import DriftScheduler
from runner.engine.planner import Planner, PlanOptions, PlanTarget, build_planner
from runner.results.drift import Correction, DriftStatus
from runner.results.model import PlanResult
from runner.store.drift import DriftStore
from tests.support.drift_world import World, make_world, project_tf

AUTO = "{auto_correct: true}"


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    w = make_world(tmp_path, monkeypatch, {"alpha": "a"}, {"alpha": AUTO})
    yield w
    w.store.close()


def test_auto_correct_restores_the_file_and_the_rescan_is_clean(world: World) -> None:
    world.file("alpha").write_text("edited")
    (result,) = world.service().scan(world.drift_repo()).results
    assert (result.status, result.correction) == (DriftStatus.IN_SYNC, Correction.CORRECTED)
    assert result.drifted[0].changed_attributes == ("content",)
    assert world.file("alpha").read_text() == "a"
    applies = [r for r in world.store.runs.list_runs() if r.command == "apply"]
    assert [a.status.value for a in applies] == ["success"]
    assert world.store.locks.list() == []


def test_destructive_correction_needs_approval(world: World) -> None:
    # A replace is planned (path changed on main) while the file also drifted.
    world.repo.write(
        {
            "alpha/main.tf": (world.repo.path / "alpha/main.tf")
            .read_text()
            .replace("alpha.txt", "alpha-moved.txt")
        }
    )
    world.repo.commit("move the file: a replace")
    world.file("alpha").write_text("edited")
    (result,) = world.service().scan(world.drift_repo()).results
    assert result.status is DriftStatus.DRIFT
    assert result.correction is Correction.NEEDS_APPROVAL
    # Moving the file is main's change, not the drift's reversal: pending, and never applied.
    assert "pending changes" in result.correction_reason
    assert "files_file.f" in result.correction_reason
    assert world.file("alpha").read_text() == "edited"


class _MovesMainAfterPlanning(Planner):
    """The real planner; then someone merges to main before the correction starts."""

    def __init__(self, real: Planner, world: World) -> None:
        self._real, self._world = real, world

    def plan_all(  # type: ignore[override]
        self,
        checkout: Path,
        targets: Sequence[PlanTarget],
        commit: str | None = None,
        options: PlanOptions | None = None,
    ) -> list[PlanResult]:
        results = self._real.plan_all(checkout, targets, commit, options)
        self._world.repo.write({"README.md": f"moved {datetime.now(UTC)}\n"})
        self._world.repo.commit("someone merged")
        return results


def test_main_moved_after_the_scan_is_not_applied(world: World) -> None:
    world.file("alpha").write_text("edited")
    planner = _MovesMainAfterPlanning(build_planner(world.settings), world)
    (result,) = world.service(planner=planner).scan(world.drift_repo()).results
    assert result.correction is Correction.NEEDS_APPROVAL
    assert "moved since the scan" in result.correction_reason
    assert world.file("alpha").read_text() == "edited"


def test_correction_window() -> None:
    monday_10 = datetime(2024, 12, 2, 10, 0, tzinfo=UTC)
    assert in_window(None, monday_10)
    assert in_window("Mon-Fri 09:00-17:00", monday_10)
    assert not in_window("Mon-Fri 09:00-17:00", monday_10 + timedelta(days=5))
    assert not in_window("Mon-Fri 11:00-17:00", monday_10)
    assert in_window("22:00-11:00", monday_10)
    assert not in_window("whenever", monday_10)


def test_scheduler_fires_once_with_two_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo_url = str(tmp_path / "repo")
    w = make_world(
        tmp_path,
        monkeypatch,
        {"alpha": "a", "beta": "b"},
        repos=({"url": repo_url},),
        drift_schedule="0 * * * *",
    )
    try:
        workers = [DriftScheduler(w.service(), owner=f"worker-{i}") for i in range(2)]
        now = datetime(2024, 12, 2, 12, 0, tzinfo=UTC) + timedelta(hours=1, minutes=59)
        with ThreadPoolExecutor(2) as pool:
            reports = list(pool.map(lambda s: s.tick(now), workers))
        assert sorted(len(r) for r in reports) == [0, 1]
        assert len(DriftStore(w.store).history(w.drift_repo().key)) == 2
        # The same slot never fires again, on either worker.
        assert [r for worker in workers for r in worker.tick(now)] == []
        assert len(DriftStore(w.store).history(w.drift_repo().key)) == 2
    finally:
        w.store.close()


# ---- auto-correct reverts drift only (issue 7, row 12) ----------------------------------
#
# Each story is an attack on the old rule "apply the scan's whole plan whenever anything
# drifted": a change on main that nobody applied rides along with the correction.


def second_file_tf(world: World, content: str) -> str:
    """A second `files_file` in project alpha, managing `alpha-second.txt`."""
    return (
        f'resource "files_file" "second" {{\n  path    = "{world.world}/alpha-second.txt"\n'
        f'  content = "{content}"\n}}\n'
    )


def alpha_tf(world: World, content: str = "a", path: str = "alpha.txt") -> str:
    return project_tf(world.state, world.world, "alpha", content).replace("alpha.txt", path)


def apply_runs(world: World) -> list[str]:
    return [r.status.value for r in world.store.runs.list_runs() if r.command == "apply"]


def test_a_pending_change_to_another_resource_is_not_applied_by_a_correction(
    world: World,
) -> None:
    # alpha manages two files, both applied.
    world.repo.write({"alpha/main.tf": alpha_tf(world) + second_file_tf(world, "one")})
    world.repo.commit("a second file")
    world.apply_all(["alpha"])
    second = world.world / "alpha-second.txt"
    assert second.read_text() == "one"
    # Someone merges a change to the second file; nobody applies it.
    world.repo.write({"alpha/main.tf": alpha_tf(world) + second_file_tf(world, "two")})
    world.repo.commit("change the second file, not applied")
    # Meanwhile the first file is edited by hand.
    world.file("alpha").write_text("edited")

    (result,) = world.service().scan(world.drift_repo()).results

    assert result.status is DriftStatus.DRIFT
    assert result.correction is Correction.NEEDS_APPROVAL
    assert "pending changes, not corrected" in result.correction_reason
    assert "files_file.second" in result.correction_reason
    assert world.file("alpha").read_text() == "edited"
    assert second.read_text() == "one"
    assert apply_runs(world) == []


def test_a_new_resource_on_main_is_not_created_by_a_correction(world: World) -> None:
    world.repo.write({"alpha/main.tf": alpha_tf(world) + second_file_tf(world, "new")})
    world.repo.commit("add a file, not applied")
    world.file("alpha").write_text("edited")

    (result,) = world.service().scan(world.drift_repo()).results

    assert result.correction is Correction.NEEDS_APPROVAL
    assert "pending changes, not corrected" in result.correction_reason
    assert not (world.world / "alpha-second.txt").exists()
    assert world.file("alpha").read_text() == "edited"
    assert apply_runs(world) == []


@pytest.fixture
def destroy_allowed_world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """alpha may be corrected even by a replacement (`allow_destroy: true`)."""
    w = make_world(
        tmp_path,
        monkeypatch,
        {"alpha": "a"},
        {"alpha": "{auto_correct: true, allow_destroy: true}"},
    )
    yield w
    w.store.close()


def test_main_changing_another_attribute_of_a_drifted_resource_is_not_applied(
    destroy_allowed_world: World,
) -> None:
    world = destroy_allowed_world
    # main moves the file (its `path`); the drift is on its `content`. The plan replaces
    # the resource: that is main's change, not the reversal of the drift.
    world.repo.write({"alpha/main.tf": alpha_tf(world, path="alpha-moved.txt")})
    world.repo.commit("move the file, not applied")
    world.file("alpha").write_text("edited")

    (result,) = world.service().scan(world.drift_repo()).results

    assert result.drifted[0].changed_attributes == ("content",)
    assert result.correction is Correction.NEEDS_APPROVAL
    assert "pending changes, not corrected" in result.correction_reason
    assert world.file("alpha").read_text() == "edited"
    assert not (world.world / "alpha-moved.txt").exists()
    assert apply_runs(world) == []


def test_main_changing_the_drifted_attribute_to_a_new_value_is_not_applied(
    world: World,
) -> None:
    # Drift: content "a" → "edited" by hand. main: content "a" → "b", never applied.
    # Undoing the drift writes "a"; this plan writes "b", which nobody applied.
    world.write_project("alpha", "b")
    world.repo.commit("new content, not applied")
    world.file("alpha").write_text("edited")

    (result,) = world.service().scan(world.drift_repo()).results

    assert result.correction is Correction.NEEDS_APPROVAL
    assert "pending changes, not corrected" in result.correction_reason
    assert world.file("alpha").read_text() == "edited"
    assert apply_runs(world) == []


def test_a_file_deleted_by_hand_is_created_again(world: World) -> None:
    world.file("alpha").unlink()

    (result,) = world.service().scan(world.drift_repo()).results

    assert (result.status, result.correction) == (DriftStatus.IN_SYNC, Correction.CORRECTED)
    assert world.file("alpha").read_text() == "a"
    assert apply_runs(world) == ["success"]
