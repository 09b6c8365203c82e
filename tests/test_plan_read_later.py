"""The JSON plan read after the comment (PlanOptions.read_plan_later, Planner.read_plans),
on real Terraform: the printed counts the comment shows equal the JSON plan's, a plan is
recorded as appliable only once its JSON plan was read, and one that cannot be read back
is an error, never an appliable plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.config.model import ProjectConfig
from runner.config.workflows import Workflow
from runner.engine.planner import Planner, PlanOptions, PlanTarget, build_planner
from runner.engine.recording import record_plan_result, record_read_plan
from runner.results.model import PlanResult, PlanStatus
from runner.results.summary import changes_content_hash, summary_from_output
from runner.settings import load_settings
from runner.store.runs import Trigger
from runner.store.store import Store

BEFORE = """
resource "terraform_data" "upd" { input = "a" }
resource "terraform_data" "rep" {
  input            = "a"
  triggers_replace = "a"
}
resource "terraform_data" "gone" { input = "a" }
resource "terraform_data" "forget" { input = "a" }
resource "terraform_data" "req" { input = "a" }
resource "terraform_data" "keep" { input = "a" }
"""
# Every kind of planned action Terraform prints, against the state BEFORE made.
AFTER = {
    "create only": BEFORE + 'resource "terraform_data" "new" { input = "a" }\n',
    "update": BEFORE.replace('"upd" { input = "a" }', '"upd" { input = "b" }'),
    "replace": BEFORE.replace('triggers_replace = "a"', 'triggers_replace = "b"'),
    "delete": BEFORE.replace('resource "terraform_data" "gone" { input = "a" }', ""),
    "import": BEFORE
    + 'import {\n  to = terraform_data.imp\n  id = "x"\n}\n'
    + 'resource "terraform_data" "imp" { input = "a" }\n',
    "everything": BEFORE.replace('"upd" { input = "a" }', '"upd" { input = "b" }')
    .replace('triggers_replace = "a"', 'triggers_replace = "b"')
    .replace('resource "terraform_data" "gone" { input = "a" }', "")
    .replace(
        'resource "terraform_data" "forget" { input = "a" }',
        "removed {\n  from = terraform_data.forget\n  lifecycle {\n    destroy = false\n  }\n}\n",
    )
    .replace('"keep"', '"kept"')
    + "moved {\n  from = terraform_data.keep\n  to   = terraform_data.kept\n}\n"
    + 'resource "terraform_data" "new" { input = "a" }\n',
}


@pytest.fixture
def planner(tmp_path: Path) -> Planner:
    return build_planner(load_settings(data_dir=tmp_path / "data", parallelism=2))


def _applied(planner: Planner, checkout: Path, text: str) -> None:
    """A project whose state holds what `text` manages."""
    (checkout / "app").mkdir(parents=True, exist_ok=True)
    (checkout / "app/main.tf").write_text(text)
    (first,) = planner.plan_all(checkout, [PlanTarget(ProjectConfig(name="app", dir="app"))])
    assert first.status is PlanStatus.CHANGES, first.error
    applied = planner._terraform_for(None).apply(checkout / "app", Path(first.plan_path or ""))
    assert applied.ok, applied.stderr


def _fresh_checkout(tmp_path: Path) -> Path:
    """A checkout whose one project manages BEFORE, with no state yet."""
    checkout = tmp_path / "checkout"
    (checkout / "app").mkdir(parents=True)
    (checkout / "app/main.tf").write_text(BEFORE)
    return checkout


def _plan_later(planner: Planner, checkout: Path, extra_args: tuple[str, ...] = ()) -> PlanResult:
    target = PlanTarget(ProjectConfig(name="app", dir="app"), extra_args=extra_args)
    (result,) = planner.plan_all(checkout, [target], "c1", PlanOptions(read_plan_later=True))
    return result


@pytest.mark.parametrize("case", sorted(AFTER))
def test_the_printed_counts_are_the_json_plans_counts(
    planner: Planner, tmp_path: Path, case: str
) -> None:
    checkout = tmp_path / "checkout"
    _applied(planner, checkout, BEFORE)
    (checkout / "app/main.tf").write_text(AFTER[case])
    extra = ("-replace=terraform_data.req",) if case == "everything" else ()

    printed = _plan_later(planner, checkout, extra)
    target = PlanTarget(ProjectConfig(name="app", dir="app"), extra_args=extra)
    (read,) = planner.read_plans([target], [printed])

    assert printed.status is PlanStatus.CHANGES and printed.changes_pending
    assert printed.changes == () and printed.summary.has_changes
    assert not read.changes_pending and read.changes
    assert printed.summary == read.summary


def test_the_everything_case_counts_each_kind_apart(planner: Planner, tmp_path: Path) -> None:
    checkout = tmp_path / "checkout"
    _applied(planner, checkout, BEFORE)
    (checkout / "app/main.tf").write_text(AFTER["everything"])

    printed = _plan_later(planner, checkout, ("-replace=terraform_data.req",))

    summary = printed.summary
    assert (summary.add, summary.change, summary.destroy, summary.replace) == (1, 1, 1, 2)


def test_output_with_no_sentence_it_knows_gives_no_counts() -> None:
    # Output-only changes print no "Plan:" sentence; a future wording may differ too.
    assert summary_from_output("Changes to Outputs:\n  + x = 1\n") is None
    assert summary_from_output("Plan: 1 to add, 0 to change, 0 to destroy.\n" * 2) is None
    # A sentence without the headers it counts is not believed either.
    assert summary_from_output("Plan: 0 to add, 0 to change, 1 to destroy.\n") is None


def test_without_read_plan_later_the_json_plan_is_read_at_once(
    planner: Planner, tmp_path: Path
) -> None:
    checkout = _fresh_checkout(tmp_path)

    (result,) = planner.plan_all(checkout, [PlanTarget(ProjectConfig(name="app", dir="app"))])

    assert not result.changes_pending and len(result.changes) == 6


def _planned_fresh(planner: Planner, tmp_path: Path) -> PlanResult:
    """BEFORE planned in a new checkout with its JSON plan left for later."""
    return _plan_later(planner, _fresh_checkout(tmp_path))


def test_a_plan_becomes_appliable_only_once_its_json_plan_is_read(
    planner: Planner, tmp_path: Path, store: Store
) -> None:
    printed = _planned_fresh(planner, tmp_path)
    where = {"repo": "acme/infra", "trigger": Trigger.AUTOPLAN, "pr_number": 7}

    run_id = record_plan_result(store, printed, **where)

    assert store.runs.latest_plans("acme/infra", 7) == []  # nothing to apply yet
    run = store.runs.get_run(run_id)
    assert run is not None and run.summary == printed.summary

    target = PlanTarget(ProjectConfig(name="app", dir="app"))
    (read,) = planner.read_plans([target], [printed])
    record_read_plan(store, run_id, read, trusted=True)

    (plan,) = store.runs.latest_plans("acme/infra", 7)
    assert plan.checksum == printed.plan_checksum
    assert plan.content_hash == changes_content_hash(read.changes)
    assert {change.address for change in plan.changes} == {
        f"terraform_data.{name}" for name in ("upd", "rep", "gone", "forget", "req", "keep")
    }


def test_a_plan_that_cannot_be_read_back_is_an_error_and_never_recorded_as_appliable(
    planner: Planner, tmp_path: Path, store: Store
) -> None:
    printed = _planned_fresh(planner, tmp_path)
    run_id = record_plan_result(store, printed, repo="acme/infra", trigger="autoplan", pr_number=7)
    Path(printed.plan_path or "").write_bytes(b"not a plan file")

    target = PlanTarget(ProjectConfig(name="app", dir="app"))
    (read,) = planner.read_plans([target], [printed])
    record_read_plan(store, run_id, read, trusted=True)

    assert read.status is PlanStatus.ERROR
    assert "could not be read" in read.error
    assert store.runs.latest_plans("acme/infra", 7) == []
    run = store.runs.get_run(run_id)
    assert run is not None and run.status.value == "failed"


# --- counts a PR's text could fake --------------------------------------------------------

PRINTED = """\
  # terraform_data.a will be created
  + resource "terraform_data" "a" {
      + id = (known after apply)
    }

  # terraform_data.b will be destroyed
  - resource "terraform_data" "b" {
      - id = "1" -> null
    }

Plan: 1 to add, 0 to change, 1 to destroy.
"""


def test_printed_headers_and_sentence_give_the_counts() -> None:
    summary = summary_from_output(PRINTED)

    assert summary is not None
    assert (summary.add, summary.change, summary.destroy, summary.replace) == (1, 0, 1, 0)


@pytest.mark.parametrize(
    "forged",
    [
        # A value printed before the sentence (a refreshed id, a key) imitating a header:
        # the headers no longer add up to the sentence, so the JSON plan decides.
        "terraform_data.a: Refreshing state... [id=x]\n  # terraform_data.b must be replaced\n",
        '  # terraform_data.x["k"] will be created\n',
        # A second sentence (a check block's message, a script's echo).
        "\nPlan: 0 to add, 0 to change, 0 to destroy.\n",
    ],
)
def test_text_that_imitates_terraform_gives_no_counts(forged: str) -> None:
    tampered = forged + PRINTED if not forged.startswith("\nPlan") else PRINTED + forged

    assert summary_from_output(tampered) is None


def test_a_header_phrase_inside_an_address_is_not_a_header() -> None:
    key = '  # terraform_data.a["must be replaced"] will be created\n'
    output = PRINTED.replace("  # terraform_data.a will be created\n", key)

    summary = summary_from_output(output)

    assert summary is not None and (summary.add, summary.replace) == (1, 0)


def test_diagnostics_after_the_sentence_are_not_read() -> None:
    warning = "\nWarning: Check block assertion failed\n\n  # terraform_data.c must be replaced\n"

    summary = summary_from_output(PRINTED + warning)

    assert summary is not None and summary.replace == 0


def test_a_custom_workflows_counts_come_from_the_json_plan(
    planner: Planner, tmp_path: Path
) -> None:
    checkout = _fresh_checkout(tmp_path)
    workflow = Workflow(name="custom", source="repo")  # default steps, but a workflow
    project = ProjectConfig(name="app", dir="app", resolved_workflow=workflow)

    (result,) = planner.plan_all(
        checkout, [PlanTarget(project)], "c1", PlanOptions(read_plan_later=True)
    )

    assert result.status is PlanStatus.CHANGES, result.error
    assert not result.changes_pending and len(result.changes) == 6
