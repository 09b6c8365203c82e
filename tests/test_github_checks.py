"""Check runs: as a GitHub App the runner shows each project's plan as a check run.

Signed webhooks go into the served runner (persisted queue, real Terraform); the fake
GitHub keeps the check runs as GitHub would (only an App may write them, output fields
capped at 65,535 characters) and builds the `check_run` webhook a "Re-run" click sends.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runner.commands.planning import PullRequestPlanner
from runner.events.commands import Command
from runner.events.github import (
    RERUNNABLE_CHECK_PREFIX,
    parse_github_event,
    rerun_as_command,
    suite_rerun_as_command,
)
from runner.events.model import (
    CheckRunRerun,
    CheckSuiteRerun,
    CommentEvent,
    IgnoredEvent,
    RepoRef,
)
from runner.forge.base import PLAN_CONTEXT, ProjectReport, ReportState, project_context
from runner.forge.factory import ForgeNotConfigured, build_forge
from runner.forge.github_checks import CHECK_OUTPUT_CAP, check_output
from runner.jobs.model import decode_event, encode_event
from runner.settings import load_settings
from tests.support.fake_github import CheckRun
from tests.support.github_payloads import post_delivery, pull_request_event
from tests.support.pr_world import (
    APP_CHANGE,
    APP_ID,
    APP_INSTALLATION,
    FULL_NAME,
    WEBHOOK_SECRET,
    PullRequestWorld,
    ServedRunner,
    make_app_world,
    make_world,
)

pytest_plugins = ["tests.support.app_world"]  # the `app_world` fixture

BROKEN_NETWORK = {"infra/network/broken.tf": 'resource "terraform_data" "x" {\n  input = \n}\n'}
# infra/db emptied of resources: with no state either, its plan has no changes.
NO_CHANGES_DB = {"infra/db/main.tf": 'terraform {\n  required_version = ">= 1.4"\n}\n'}


@pytest.fixture
def served(app_world: PullRequestWorld) -> Iterator[ServedRunner]:
    runner = ServedRunner(app_world.settings)
    try:
        yield runner
    finally:
        runner.stop()


def as_app(payload: dict) -> dict:
    """What an App's webhook carries besides a repository hook's: its installation."""
    return payload | {"installation": {"id": APP_INSTALLATION, "node_id": "MDIz"}}


def open_pull(world: PullRequestWorld, branch: str, files: dict[str, str]) -> int:
    """Push a branch and open a PR on the fake, without delivering anything yet."""
    head = world.push_branch(branch, files)
    number = world.github.open_pull(
        FULL_NAME,
        head_sha=head,
        head_ref=branch,
        base_sha=world.main_sha(),
        user="alice",
        files=list(files),
    )
    world._branches[number] = branch
    return number


def deliver_opened(world: PullRequestWorld, runner: ServedRunner, number: int) -> None:
    pull = world.github.pull(FULL_NAME, number)
    payload = pull_request_event(
        "opened", world.github.repo(FULL_NAME), pull, pull.user, hosts=world.github.hosts
    )
    reply = post_delivery(runner.url, "pull_request", as_app(payload), WEBHOOK_SECRET)
    assert reply.status_code == 202, reply.text
    runner.wait_idle()


def click_rerun(world: PullRequestWorld, runner: ServedRunner, payload: dict) -> dict:
    reply = post_delivery(runner.url, "check_run", as_app(payload), WEBHOOK_SECRET)
    assert reply.ok, reply.text
    runner.wait_idle()
    return reply.json()


def runs_by_name(world: PullRequestWorld, sha: str) -> dict[str, list[CheckRun]]:
    found: dict[str, list[CheckRun]] = {}
    for run in world.github.check_runs(FULL_NAME, sha):
        found.setdefault(run.name, []).append(run)
    return found


# ---- a PR planned as the App ------------------------------------------------------------


def test_each_project_gets_a_check_run_with_its_conclusion_and_plan(app_world, served):
    number = open_pull(app_world, "feature", APP_CHANGE | BROKEN_NETWORK | NO_CHANGES_DB)
    head = app_world.head_sha(number)

    deliver_opened(app_world, served, number)

    runs = runs_by_name(app_world, head)
    app = runs["gitops/plan: infra/app"][-1]
    network = runs["gitops/plan: infra/network"][-1]
    db = runs["gitops/plan: infra/db"][-1]
    assert (app.conclusion, network.conclusion, db.conclusion) == ("success", "failure", "neutral")
    assert {run.app_id for run in (app, network, db)} == {APP_ID}
    assert app.history == ("in_progress", "completed")  # started when Terraform started
    assert app.output.title.startswith("Plan: ") and "to add" in app.output.title
    assert app.output.summary.startswith(f"**{app.output.title}**")
    assert "terraform_data" in app.output.summary  # the plan itself is the output
    assert network.output.title == "plan failed" and "Error" in network.output.summary
    assert db.output.title == "No changes."
    # No per-project commit statuses in App mode: the roll-up status stays.
    statuses = app_world.statuses(head)
    assert not [context for context in statuses if context.startswith("gitops/plan: ")]
    assert statuses["gitops/plan"] == "failure"


def test_the_plan_comment_is_a_short_summary_linking_to_the_check_runs(app_world, served):
    number = open_pull(app_world, "feature", APP_CHANGE)

    deliver_opened(app_world, served, number)

    comment = app_world.last_comment(number)
    run = runs_by_name(app_world, app_world.head_sha(number))["gitops/plan: infra/app"][-1]
    assert f"[`infra/app`]({app_world.github.url}/{FULL_NAME}/runs/{run.id})" in comment
    assert "Plan: " in comment and "gitops apply" in comment  # summary and next steps
    assert "```diff" not in comment and "terraform_data" not in comment  # no plan output


def test_a_big_plan_is_split_across_the_output_fields(app_world, served):
    count = 400  # ~250 characters of plan each: more than one field holds
    big = {
        "infra/app/big.tf": (
            f'resource "terraform_data" "big" {{\n  count = {count}\n'
            '  input = "a-fairly-long-value-for-instance-${count.index}"\n}\n'
        )
    }
    number = open_pull(app_world, "huge", big)

    deliver_opened(app_world, served, number)

    run = runs_by_name(app_world, app_world.head_sha(number))["gitops/plan: infra/app"][-1]
    summary, text = run.output.summary or "", run.output.text or ""
    assert len(summary) <= CHECK_OUTPUT_CAP and len(text) <= CHECK_OUTPUT_CAP
    assert len(summary) > CHECK_OUTPUT_CAP // 2 and "continued (2/2)" in text
    for index in range(count):
        assert f"terraform_data.big[{index}]" in summary + text
    assert "Output truncated" not in text


def test_output_beyond_both_fields_is_named_not_sent():
    body = "```diff\n" + "\n".join(f"+ line {n} " + "x" * 80 for n in range(3000)) + "\n```\n"
    report = ProjectReport(
        "gitops/plan: app",
        ReportState.SUCCESS,
        "Plan: 3000 to add, 0 to change, 0 to destroy.",
        body,
        "https://runner.example/api/runs?repo=x&pr=1",
    )

    output = check_output(report)

    assert len(output["summary"]) <= CHECK_OUTPUT_CAP and len(output["text"]) <= CHECK_OUTPUT_CAP
    assert output["summary"].startswith("**Plan: 3000 to add")
    assert "+ line 0 " in output["summary"]
    assert (
        output["text"]
        .rstrip()
        .endswith(
            "more characters are in [the run's log](https://runner.example/api/runs?repo=x&pr=1)."
        )
    )
    assert output["text"].count("```") % 2 == 0  # the cut closes its code fence


# ---- an apply as the App ------------------------------------------------------------------


def test_an_apply_as_the_app_shows_in_progress_then_success_with_its_output(app_world):
    number = app_world.open_pr("feature", APP_CHANGE)
    head = app_world.head_sha(number)

    app_world.comment(number, "gitops apply")

    (run,) = runs_by_name(app_world, head)["gitops/apply: infra/app"]
    assert run.app_id == APP_ID
    assert run.history == ("in_progress", "completed")  # started when Terraform started
    assert (run.conclusion, run.output.title) == ("success", "applied")
    assert run.output.summary.startswith("**applied**")
    assert "Apply complete!" in run.output.summary  # Terraform's own apply output
    statuses = app_world.statuses(head)
    assert "gitops/apply: infra/app" not in statuses  # the check run replaces it
    assert statuses["gitops/apply"] == "success"  # the roll-up stays


def test_an_apply_that_fails_completes_its_check_run_as_failure(app_world):
    failing = {
        "infra/app/fails.tf": (
            'resource "terraform_data" "fails" {\n'
            '  provisioner "local-exec" {\n    command = "exit 3"\n  }\n}\n'
        )
    }
    number = app_world.open_pr("failing", failing)
    head = app_world.head_sha(number)

    app_world.comment(number, "gitops apply")

    (run,) = runs_by_name(app_world, head)["gitops/apply: infra/app"]
    assert run.history == ("in_progress", "completed")
    assert (run.conclusion, run.output.title) == ("failure", "apply failed")
    assert "Error" in run.output.summary
    assert app_world.statuses(head)["gitops/apply"] == "failure"


def test_the_apply_comment_is_a_short_summary_linking_to_the_check_runs(app_world):
    number = app_world.open_pr("feature", APP_CHANGE)

    app_world.comment(number, "gitops apply")

    comment = app_world.last_comment(number)
    (run,) = runs_by_name(app_world, app_world.head_sha(number))["gitops/apply: infra/app"]
    link = f"[`infra/app`]({app_world.github.url}/{FULL_NAME}/runs/{run.id})"
    assert f"**Full output, in the checks:** {link}" in comment
    assert "1 applied, 0 failed" in comment and "**Applied.**" in comment
    assert "Apply complete!" not in comment and "```" not in comment  # no output


# ---- "Re-run" ----------------------------------------------------------------------------


def test_rerun_replans_that_project_as_the_person_who_clicked(app_world, served):
    number = open_pull(app_world, "feature", APP_CHANGE)
    deliver_opened(app_world, served, number)
    head = app_world.head_sha(number)
    first = runs_by_name(app_world, head)["gitops/plan: infra/app"][-1]
    comments = len(app_world.comments(number))
    store, key = app_world.services.store, app_world.pr_event("opened", number).repo.key
    (before,) = store.runs.latest_plans(key, number)

    answer = click_rerun(
        app_world, served, app_world.github.check_run_event(FULL_NAME, first.id, "bob")
    )

    assert answer["status"] == "queued"
    runs = runs_by_name(app_world, head)["gitops/plan: infra/app"]
    assert len(runs) == 2 and runs[-1].id != first.id
    assert runs[-1].history == ("in_progress", "completed") and runs[-1].conclusion == "success"
    assert len(app_world.comments(number)) == comments + 1
    assert "requested by @bob" in runs[-1].output.summary
    (after,) = store.runs.latest_plans(key, number)
    assert after.project == "infra/app" and after.run_id != before.run_id and after.trusted


def test_a_rerun_of_another_apps_check_run_is_ignored(app_world, served):
    number = open_pull(app_world, "feature", APP_CHANGE)
    head = app_world.head_sha(number)
    # Another App (a CI) names its check like ours: clicking it must not plan anything.
    theirs = app_world.github.add_check_run(FULL_NAME, head, "gitops/plan: infra/app")

    answer = click_rerun(
        app_world, served, app_world.github.check_run_event(FULL_NAME, theirs, "alice")
    )

    assert answer == {"status": "ignored", "reason": "check run of another app"}
    assert app_world.services.store.jobs.list() == []
    assert app_world.comments(number) == []


def test_a_rerun_by_a_stranger_is_refused_like_their_comment(app_world, served):
    number = open_pull(app_world, "feature", APP_CHANGE)
    deliver_opened(app_world, served, number)
    head = app_world.head_sha(number)
    ours = runs_by_name(app_world, head)["gitops/plan: infra/app"][-1]

    click_rerun(app_world, served, app_world.github.check_run_event(FULL_NAME, ours.id, "mallory"))

    assert "@mallory has no access" in app_world.last_comment(number)
    assert len(runs_by_name(app_world, head)["gitops/plan: infra/app"]) == 1


def test_a_rerun_on_a_fork_pr_is_refused(app_world, served):
    ours = _our_check_run_on_a_fork_pr(app_world)
    number, run_id = ours

    # What GitHub sends: no pull request listed for a fork's head commit.
    genuine = app_world.github.check_run_event(FULL_NAME, run_id, "mallory")
    assert genuine["check_run"]["pull_requests"] == []
    assert click_rerun(app_world, served, genuine)["status"] == "ignored"
    # Listing the fork PR anyway (a replayed or crafted payload) meets the fork rule.
    crafted = app_world.github.check_run_event(FULL_NAME, run_id, "mallory", pull_numbers=[number])
    assert click_rerun(app_world, served, crafted)["status"] == "queued"

    assert "comes from a fork" in app_world.last_comment(number)
    assert len(app_world.github.check_runs(FULL_NAME, app_world.head_sha(number))) == 1
    key = app_world.pr_event("opened", number).repo.key
    assert app_world.services.store.runs.list_runs(key) == []


def _our_check_run_on_a_fork_pr(world: PullRequestWorld) -> tuple[int, int]:
    """A fork PR (never planned: forks are off) whose head carries a check run by our App,
    as after the fork's branch was once planned in this repository."""
    head = world.push_branch("forked", APP_CHANGE)
    number = world.github.open_pull(
        FULL_NAME,
        head_sha=head,
        head_ref="forked",
        base_sha=world.main_sha(),
        user="mallory",
        fork=True,
    )
    forge = world.services.forge_for("github")
    repo = world.pr_event("opened", number).repo
    forge.report_project(
        repo, head, ProjectReport("gitops/plan: infra/app", ReportState.SUCCESS, "No changes.")
    )
    (run,) = world.github.check_runs(FULL_NAME, head)
    return number, run.id


# ---- "Re-run all checks" --------------------------------------------------------------------


def click_rerun_all(world: PullRequestWorld, runner: ServedRunner, payload: dict) -> dict:
    reply = post_delivery(runner.url, "check_suite", as_app(payload), WEBHOOK_SECRET)
    assert reply.ok, reply.text
    runner.wait_idle()
    return reply.json()


def test_rerun_all_replans_every_project_as_the_person_who_clicked(app_world, served):
    number = open_pull(app_world, "feature", APP_CHANGE | NO_CHANGES_DB)
    deliver_opened(app_world, served, number)
    head = app_world.head_sha(number)
    first = runs_by_name(app_world, head)["gitops/plan: infra/app"][-1]
    comments = len(app_world.comments(number))

    answer = click_rerun_all(
        app_world, served, app_world.github.check_suite_event(FULL_NAME, first.id, "bob")
    )

    assert answer["status"] == "queued"
    runs = runs_by_name(app_world, head)
    for name in ("gitops/plan: infra/app", "gitops/plan: infra/db"):
        assert len(runs[name]) == 2 and runs[name][-1].history == ("in_progress", "completed")
    assert len(app_world.comments(number)) == comments + 1
    store, key = app_world.services.store, app_world.pr_event("opened", number).repo.key
    plans = store.runs.latest_plans(key, number)
    assert {plan.project for plan in plans} == {"infra/app", "infra/db"}
    for plan in plans:
        run = store.runs.get_run(plan.run_id)
        assert run is not None and run.author == "bob" and plan.trusted


def test_rerun_all_of_another_apps_suite_is_ignored(app_world, served):
    number = open_pull(app_world, "feature", APP_CHANGE)
    theirs = app_world.github.add_check_run(
        FULL_NAME, app_world.head_sha(number), "gitops/plan: infra/app"
    )

    answer = click_rerun_all(
        app_world, served, app_world.github.check_suite_event(FULL_NAME, theirs, "alice")
    )

    assert answer == {"status": "ignored", "reason": "check suite of another app"}
    assert app_world.services.store.jobs.list() == []
    assert app_world.comments(number) == []


def test_rerun_all_by_a_stranger_is_refused_like_their_comment(app_world, served):
    number = open_pull(app_world, "feature", APP_CHANGE)
    deliver_opened(app_world, served, number)
    head = app_world.head_sha(number)
    ours = runs_by_name(app_world, head)["gitops/plan: infra/app"][-1]

    click_rerun_all(
        app_world, served, app_world.github.check_suite_event(FULL_NAME, ours.id, "mallory")
    )

    assert "@mallory has no access" in app_world.last_comment(number)
    assert len(runs_by_name(app_world, head)["gitops/plan: infra/app"]) == 1


def test_rerun_all_on_a_fork_pr_is_refused(app_world, served):
    number, run_id = _our_check_run_on_a_fork_pr(app_world)

    genuine = app_world.github.check_suite_event(FULL_NAME, run_id, "mallory")
    assert genuine["check_suite"]["pull_requests"] == []
    assert click_rerun_all(app_world, served, genuine)["status"] == "ignored"
    crafted = app_world.github.check_suite_event(
        FULL_NAME, run_id, "mallory", pull_numbers=[number]
    )
    assert click_rerun_all(app_world, served, crafted)["status"] == "queued"

    assert "comes from a fork" in app_world.last_comment(number)
    assert len(app_world.github.check_runs(FULL_NAME, app_world.head_sha(number))) == 1
    key = app_world.pr_event("opened", number).repo.key
    assert app_world.services.store.runs.list_runs(key) == []


def test_a_bots_rerun_all_and_other_actions_are_ignored(app_world):
    number = open_pull(app_world, "feature", APP_CHANGE)
    forge = app_world.services.forge_for("github")
    repo = app_world.pr_event("opened", number).repo
    head = app_world.head_sha(number)
    forge.report_project(
        repo, head, ProjectReport("gitops/plan: infra/app", ReportState.SUCCESS, "x")
    )
    (ours,) = app_world.github.check_runs(FULL_NAME, head)
    github = app_world.github

    by_bot = parse_github_event(
        "check_suite", as_app(github.check_suite_event(FULL_NAME, ours.id, "ci[bot]"))
    )
    completed = parse_github_event(
        "check_suite",
        as_app(github.check_suite_event(FULL_NAME, ours.id, "alice", action="completed")),
    )

    assert isinstance(by_bot, CheckSuiteRerun)
    assert suite_rerun_as_command(by_bot, APP_ID) == IgnoredEvent("re-run by a bot")
    assert isinstance(completed, IgnoredEvent) and "'completed'" in completed.reason
    event = suite_rerun_as_command(
        parse_github_event(
            "check_suite", as_app(github.check_suite_event(FULL_NAME, ours.id, "alice"))
        ),
        APP_ID,
    )
    assert isinstance(event, CommentEvent)
    assert (event.pr_number, event.author, event.command) == (number, "alice", Command("plan"))
    assert decode_event(*encode_event(event)) == event


# ---- statuses stay for tokens -------------------------------------------------------------


def test_with_a_token_project_results_stay_commit_statuses(tmp_path):
    world = make_world(tmp_path)
    try:
        number = world.open_pr("feature", APP_CHANGE)
        head = world.head_sha(number)

        assert world.statuses(head)["gitops/plan: infra/app"] == "success"
        assert world.github.check_runs(FULL_NAME, head) == []
        assert "```diff" in world.last_comment(number)  # the full plan, in the comment
    finally:
        world.github.stop()
        world.services.store.close()


def test_with_a_token_an_apply_stays_a_status_and_a_full_comment(tmp_path):
    world = make_world(tmp_path)
    try:
        number = world.open_pr("feature", APP_CHANGE)
        head = world.head_sha(number)

        world.comment(number, "gitops apply")

        assert world.statuses(head)["gitops/apply: infra/app"] == "success"
        assert world.github.check_runs(FULL_NAME, head) == []
        comment = world.last_comment(number)
        assert "Apply complete!" in comment and "in the checks" not in comment
    finally:
        world.github.stop()
        world.services.store.close()


def test_checks_off_keeps_an_app_on_statuses(tmp_path):
    world = make_app_world(tmp_path)
    try:
        forge = build_forge(world.settings.model_copy(update={"github_checks": "off"}), "github")
        assert forge.shows_reports is False
        assert build_forge(world.settings, "github").shows_reports is True
    finally:
        world.github.stop()
        world.services.store.close()


def test_checks_on_without_an_app_is_a_configuration_error(tmp_path):
    settings = load_settings(data_dir=tmp_path, github_token="t", github_checks="on")

    with pytest.raises(ForgeNotConfigured, match="GITOPS_GITHUB_CHECKS=on needs a GitHub App"):
        build_forge(settings, "github")


# ---- which re-runs become a plan ----------------------------------------------------------


def _rerun(name: str = "gitops/plan: infra/app", **changes: object) -> CheckRunRerun:
    repo = RepoRef("github", FULL_NAME, "file:///x.git", f"https://github.com/{FULL_NAME}", "main")
    fields: dict = {
        "repo": repo,
        "check_run_id": 7,
        "name": name,
        "app_id": APP_ID,
        "pr_numbers": (3,),
        "sender": "alice",
        "sender_is_bot": False,
    }
    return CheckRunRerun(**(fields | changes))


def test_the_rerunnable_prefix_is_the_plan_check_runs_name():
    assert project_context(PLAN_CONTEXT, "infra/app") == RERUNNABLE_CHECK_PREFIX + "infra/app"


def test_a_rerun_is_the_plan_comment_of_who_clicked_and_survives_the_queue():
    event = rerun_as_command(_rerun(), APP_ID)

    assert isinstance(event, CommentEvent)
    assert (event.pr_number, event.author, event.check_run_id) == (3, "alice", 7)
    assert event.command == Command("plan", project="infra/app")
    assert decode_event(*encode_event(event)) == event


@pytest.mark.parametrize(
    ("rerun", "app_id", "reason"),
    [
        (_rerun(), None, "check run of another app"),  # a token: the runner has no check runs
        (_rerun(app_id=1), APP_ID, "check run of another app"),
        (_rerun("gitops/apply: infra/app"), APP_ID, "is not a plan this runner re-runs"),
        (_rerun("gitops/plan"), APP_ID, "is not a plan this runner re-runs"),
        (_rerun(sender="ci[bot]", sender_is_bot=True), APP_ID, "re-run by a bot"),
        (_rerun(pr_numbers=()), APP_ID, "no open pull request"),
        (_rerun("gitops/plan: ../../etc; rm -rf"), APP_ID, "names no valid project"),
    ],
)
def test_other_reruns_are_ignored(rerun: CheckRunRerun, app_id: int | None, reason: str):
    event = rerun_as_command(rerun, app_id)

    assert isinstance(event, IgnoredEvent) and reason in event.reason


def test_an_installation_without_the_checks_permission_still_gets_statuses(app_world):
    # Installed before the App asked for `checks: write`: GitHub refuses the check runs.
    app_world.github.fail_next(
        "POST", rf"/repos/{FULL_NAME}/check-runs", 403, "Resource not accessible", times=99
    )

    number = app_world.open_pr("feature", APP_CHANGE)

    head = app_world.head_sha(number)
    assert app_world.statuses(head)["gitops/plan: infra/app"] == "success"
    assert app_world.github.check_runs(FULL_NAME, head) == []
    assert "```diff" in app_world.last_comment(number)  # no check run: the full plan


def test_a_superseded_plan_closes_its_check_runs_as_cancelled(app_world):
    number = app_world.github.open_pull(
        FULL_NAME, head_sha="c" * 40, head_ref="x", base_sha=app_world.main_sha()
    )
    repo = app_world.pr_event("opened", number).repo
    feedback = PullRequestPlanner(app_world.services).feedback(repo, number)

    feedback.plan_started("c" * 40, ["infra/app"])
    feedback.plan_cancelled("c" * 40, ["infra/app"])

    (run,) = app_world.github.check_runs(FULL_NAME, "c" * 40)
    assert (run.name, run.history, run.conclusion) == (
        "gitops/plan: infra/app",
        ("in_progress", "completed"),
        "cancelled",
    )
    assert run.output.title == "superseded by a newer commit"
