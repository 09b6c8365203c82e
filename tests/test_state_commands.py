"""`gitops import`, `gitops state rm`, `gitops version` and `gitops cancel` on a PR.

Real Terraform against a real local state file (outside the checkout, so every
pull request's working copy shares it, as a remote backend would), through the fake
GitHub and the PR flow.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runner.events.comment_parser import parse_comment
from runner.events.model import CommentEvent
from runner.jobs.model import encode_job
from runner.jobs.queue import enqueue_event
from runner.store.jobs import JobStatus
from runner.store.runs import RunStatus
from tests.support.pr_world import PullRequestWorld, make_world

ATLANTIS_YAML = "version: 3\nprojects:\n  - name: web\n    dir: stacks/web\n"


def module(state_file: Path) -> str:
    return f"""terraform {{
  backend "local" {{
    path = "{state_file}"
  }}
}}

variable "owner" {{
  type = string
}}

resource "terraform_data" "a" {{
  input = "a-${{var.owner}}"
}}

resource "terraform_data" "b" {{
  input = "b-${{var.owner}}"
}}
"""


MakeWorld = Callable[..., PullRequestWorld]


@pytest.fixture
def build(tmp_path: Path) -> Iterator[MakeWorld]:
    built: list[PullRequestWorld] = []

    def make(**settings: object) -> PullRequestWorld:
        world = make_world(tmp_path, **settings)
        built.append(world)
        state_file = tmp_path / "state" / "web.tfstate"
        state_file.parent.mkdir(exist_ok=True)
        origin = world.origin
        origin.checkout("main")
        origin.remove(["gitops-runner.yaml"])
        origin.write(
            {
                "atlantis.yaml": ATLANTIS_YAML,
                "stacks/web/main.tf": module(state_file),
                # Picked up for the `default` workspace without any config (Atlantis does).
                "stacks/web/env/default.tfvars": 'owner = "platform"\n',
            }
        )
        origin.commit("web")
        origin.push("origin", "main")
        return world

    try:
        yield make
    finally:
        for world in built:
            world.github.stop()
            world.services.store.close()


@pytest.fixture
def world(build: MakeWorld) -> PullRequestWorld:
    return build(enable_state_commands=True)


def state(world: PullRequestWorld) -> dict[str, str]:
    """Resource address → id, read from the real state file."""
    path = world.root / "state" / "web.tfstate"
    if not path.exists():
        return {}
    document = json.loads(path.read_text())
    return {
        f"{r['type']}.{r['name']}": r["instances"][0]["attributes"]["id"]
        for r in document["resources"]
    }


def open_and_apply(world: PullRequestWorld) -> int:
    number = world.open_pr("change", {"stacks/web/notes.tf": "# a change\n"})
    assert "2 to add" in world.last_comment(number)  # env/default.tfvars was used
    world.comment(number, "gitops apply")
    assert set(state(world)) == {"terraform_data.a", "terraform_data.b"}
    world.merge(number)  # releases the project's lock
    return number


def test_import_brings_an_object_into_real_state_and_voids_the_plan(
    world: PullRequestWorld,
) -> None:
    number = world.open_pr("adopt", {"stacks/web/notes.tf": "# adopt\n"})
    assert "2 to add" in world.last_comment(number)

    world.comment(number, "atlantis import -p web terraform_data.a existing-a-123")

    reply = world.last_comment(number)
    assert "**Done.**" in reply and "Import successful" in reply
    assert "plan -p web" in reply and "discarded" in reply
    assert state(world) == {"terraform_data.a": "existing-a-123"}
    world.comment(number, "gitops apply")
    assert "no plan to apply" in world.last_comment(number)  # the old plan is void
    world.comment(number, "gitops plan -p web")
    assert "1 to add" in world.last_comment(number)


def test_state_rm_forgets_an_object_and_the_next_plan_recreates_it(
    world: PullRequestWorld,
) -> None:
    open_and_apply(world)
    number = world.open_pr("forget", {"stacks/web/more.tf": "# forget a\n"})

    world.comment(number, "gitops state rm -p web terraform_data.a")

    reply = world.last_comment(number)
    assert "**Done.**" in reply and "Removed terraform_data.a" in reply
    assert set(state(world)) == {"terraform_data.b"}
    world.comment(number, "gitops plan -p web")
    assert "1 to add" in world.last_comment(number)
    runs = world.services.store.runs.list_runs(pr_number=number)
    assert [(r.command, r.status) for r in runs if r.command == "state_rm"] == [
        ("state_rm", RunStatus.SUCCESS)
    ]


def test_state_commands_are_off_unless_the_server_enables_them(build: MakeWorld) -> None:
    world = build()
    number = world.open_pr("adopt", {"stacks/web/notes.tf": "# adopt\n"})

    world.comment(number, "gitops import -p web terraform_data.a x")

    reply = world.last_comment(number).replace("\\", "")
    assert "off on this server (GITOPS_ENABLE_STATE_COMMANDS)" in reply
    assert state(world) == {}


def test_a_reader_cannot_touch_state(world: PullRequestWorld) -> None:
    open_and_apply(world)
    number = world.open_pr("forget", {"stacks/web/more.tf": "# x\n"})

    world.comment(number, "gitops state rm -p web terraform_data.a", user="eve")

    assert "needs write permission" in world.last_comment(number)
    assert set(state(world)) == {"terraform_data.a", "terraform_data.b"}


def test_an_injection_in_the_address_is_refused_and_state_is_untouched(
    world: PullRequestWorld,
) -> None:
    open_and_apply(world)
    number = world.open_pr("forget", {"stacks/web/more.tf": "# x\n"})

    world.comment(number, "gitops state rm -p web 'terraform_data.a;touch${IFS}pwned'")
    assert "is not a Terraform resource address" in world.last_comment(number)
    world.comment(number, "gitops import -p web terraform_data.c '$(touch pwned)'")
    assert "is not a resource id" in world.last_comment(number)
    assert set(state(world)) == {"terraform_data.a", "terraform_data.b"}
    assert not list(world.root.rglob("pwned"))


def test_a_project_locked_by_another_pr_is_not_touched(world: PullRequestWorld) -> None:
    first = world.open_pr("first", {"stacks/web/notes.tf": "# first\n"})
    second = world.open_pr("second", {"stacks/web/other.tf": "# second\n"})

    world.comment(second, "gitops import -p web terraform_data.a x")

    assert f"locked by #{first}" in world.last_comment(second)
    assert state(world) == {}


def test_version_names_the_runner_and_terraform(world: PullRequestWorld) -> None:
    number = world.open_pr("v", {"stacks/web/notes.tf": "# v\n"})

    world.comment(number, "gitops version", user="eve")  # read access is enough

    assert "gitops-runner `0.1.0`, Terraform `1." in world.last_comment(number)


def test_cancel_drops_the_prs_queued_jobs_only(world: PullRequestWorld) -> None:
    number = world.open_pr("c", {"stacks/web/notes.tf": "# c\n"})
    other = world.open_pr("d", {"stacks/web/other.tf": "# d\n"})
    store = world.services.store
    mine = enqueue_event(store, world.pr_event("opened", number))
    theirs = enqueue_event(store, world.pr_event("opened", other))

    world.comment(number, "gitops cancel", user="eve")  # a reader may not
    assert store.jobs.get(mine).status is JobStatus.QUEUED

    world.comment(number, "gitops cancel")

    assert "Cancelled 1 queued run(s)" in world.last_comment(number)
    assert store.jobs.get(mine).status is JobStatus.CANCELLED
    assert store.jobs.get(theirs).status is JobStatus.QUEUED


def test_a_cancel_job_does_not_queue_behind_the_work_it_cancels(world: PullRequestWorld) -> None:
    number = world.open_pr("c", {"stacks/web/notes.tf": "# c\n"})
    plan = world.pr_event("opened", number)
    cancel = CommentEvent(
        repo=plan.repo,
        pr_number=number,
        comment_id=1,
        body="gitops cancel",
        author="alice",
        author_is_bot=False,
        command=parse_comment("gitops cancel"),
    )
    assert encode_job(plan).group_key is not None
    assert encode_job(cancel).group_key is None


def test_a_failing_pre_workflow_hook_stops_an_import(build: MakeWorld, tmp_path: Path) -> None:
    repos = tmp_path / "repos.yaml"
    repos.write_text(
        "repos:\n  - id: /.*/\n    pre_workflow_hooks:\n"
        '      - run: \'[ "$COMMAND_NAME" != import ] || { echo "no imports today"; exit 3; }\'\n'
    )
    world = build(enable_state_commands=True, repo_config=repos)
    number = world.open_pr("adopt", {"stacks/web/notes.tf": "# adopt\n"})
    assert "2 to add" in world.last_comment(number)  # the hook lets plans through

    world.comment(number, "gitops import -p web terraform_data.a existing-a")

    reply = world.last_comment(number)
    assert "pre\\_workflow\\_hook" in reply and "no imports today" in reply
    assert state(world) == {}
