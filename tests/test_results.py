"""Plan digests, masking, Markdown rendering and comment splitting (runner/results/).

Plans come from real Terraform runs recorded in tests/fixtures/plans/ (see generate.py
there); splitting is checked as properties over many generated documents and caps.
"""

from __future__ import annotations

import json
import random
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from runner.results.masking import REDACTED, Masker
from runner.results.model import (
    ApplyResult,
    ApplyStatus,
    DriftedResource,
    PlanResult,
    PlanStatus,
    PlanSummary,
    ResourceChange,
)
from runner.results.render import (
    as_diff,
    render_apply_comment,
    render_message,
    render_plan_comment,
    summary_line,
)
from runner.results.split import CommentPart, split_comment, split_comment_parts
from runner.results.summary import normalized_changes_hash, summarize_plan

FIXTURES = Path(__file__).parent / "fixtures" / "plans"
SHA = "0123456789abcdef0123456789abcdef01234567"


@cache
def _plan_json(name: str) -> str:
    return (FIXTURES / f"{name}.plan.json").read_text()


def plan_json(name: str) -> dict[str, Any]:
    return json.loads(_plan_json(name))  # a fresh copy: some tests modify it


def text(name: str) -> str:
    return (FIXTURES / name).read_text()


def secret_values() -> dict[str, str]:
    return json.loads(text("values.json"))


def plan_result(name: str, **fields: Any) -> PlanResult:
    """A PlanResult as the planner would make it from a recorded scenario (unmasked)."""
    digest = summarize_plan(plan_json(name))
    status = PlanStatus.CHANGES if digest.summary.has_changes else PlanStatus.NO_CHANGES
    defaults: dict[str, Any] = {
        "project": name,
        "dir": f"infra/{name}",
        "workspace": "default",
        "status": status,
        "reason": f"changed infra/{name}/main.tf",
        "summary": digest.summary,
        "output": text(f"{name}.plan.txt"),
        "changes": digest.changes,
        "drift": digest.drift,
    }
    return PlanResult(**{**defaults, **fields})


def error_result() -> PlanResult:
    return PlanResult(
        project="broken",
        dir="infra/broken",
        workspace="default",
        status=PlanStatus.ERROR,
        output=text("error.plan.txt"),
        error="Terraform exited with code 1\n" + text("error.stderr.txt"),
    )


# --- summary ----------------------------------------------------------------------------


def test_counts_each_kind_of_change_from_a_real_plan() -> None:
    digest = summarize_plan(plan_json("changes"))
    # add: "added" and "token"; the replace is not also counted as add and destroy.
    assert digest.summary == PlanSummary(add=2, change=1, destroy=1, replace=1, import_=1)
    assert digest.summary.has_changes
    assert ResourceChange("terraform_data.replaced", ("delete", "create")) in digest.changes
    imported = ResourceChange("terraform_data.imported", ("no-op",), importing=True)
    assert imported in digest.changes
    assert "terraform_data.database" not in {c.address for c in digest.changes}  # no-op


def test_counts_drift_and_names_the_changed_attributes() -> None:
    digest = summarize_plan(plan_json("drift"))
    assert digest.summary == PlanSummary(add=1, change=1, drifted=2)
    assert digest.drift == (
        DriftedResource("fixture_file.deleted", ("delete",), ()),
        DriftedResource("fixture_file.edited", ("update",), ("content",)),
    )


def test_no_changes_plan_has_nothing_to_count() -> None:
    digest = summarize_plan(plan_json("no_changes"))
    assert digest.summary == PlanSummary()
    assert not digest.summary.has_changes
    assert digest.changes == () == digest.drift


def test_replace_counts_in_both_orders_and_moves_are_not_drift() -> None:
    def entry(address: str, actions: list[str]) -> dict[str, Any]:
        return {"address": address, "change": {"actions": actions, "before": {}, "after": {}}}

    plan = {
        "resource_changes": [
            entry("a.cbd", ["create", "delete"]),
            entry("a.dbc", ["delete", "create"]),
            entry("data.a.b", ["read"]),
        ],
        "resource_drift": [entry("a.moved", ["no-op"])],
    }
    digest = summarize_plan(plan)
    assert digest.summary == PlanSummary(replace=2)
    assert digest.drift == ()


def test_changes_hash_ignores_order_and_values_but_not_actions() -> None:
    original = summarize_plan(plan_json("changes"))
    edited = plan_json("changes")
    edited["resource_changes"].reverse()
    for entry in edited["resource_changes"]:
        if entry["change"].get("after"):
            entry["change"]["after"]["input"] = "something else"
    assert summarize_plan(edited).changes_hash == original.changes_hash

    fewer = original.changes[1:]
    assert normalized_changes_hash(fewer) != original.changes_hash
    swapped = [ResourceChange(c.address, ("update",)) for c in original.changes]
    assert normalized_changes_hash(swapped) != original.changes_hash
    assert original.drift_hash == normalized_changes_hash(())


# --- masking ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["db_password", "attr_token", "output_api_key"])
def test_plan_masker_hides_variables_outputs_and_attributes(kind: str) -> None:
    value = secret_values()[kind]
    masker = Masker.from_plan(plan_json("changes"))
    masked = masker.mask(f"error: {value!r} rejected\nagain {value}")
    assert value not in masked
    assert masked == f"error: '{REDACTED}' rejected\nagain {REDACTED}"


def test_env_secrets_and_url_tokens_are_masked() -> None:
    environ = {"GITOPS_GITHUB_TOKEN": "ghs_0123456789abcdef", "UNRELATED": "visible"}
    masker = Masker.from_env(["GITOPS_GITHUB_TOKEN", "NOT_SET"], environ)
    masked = masker.mask(
        "token ghs_0123456789abcdef visible\n"
        "fatal: https://x-access-token:other-token@github.com/o/r.git failed"
    )
    assert "ghs_0123456789abcdef" not in masked
    assert "other-token" not in masked
    assert "https://x-access-token:***@github.com/o/r.git" in masked
    assert "visible" in masked


def test_short_values_and_booleans_are_not_masked() -> None:
    masker = Masker.from_plan(
        {
            "configuration": {"root_module": {"variables": {"a": {"sensitive": True}}}},
            "variables": {"a": {"value": {"flag": True, "n": 7, "long": 123456, "s": "abc"}}},
        }
    )
    assert masker.mask("true 7 abc 123456") == f"true 7 abc {REDACTED}"


def test_longest_secret_wins_and_multiline_secrets_are_masked_per_line() -> None:
    key = "-----BEGIN KEY-----\nMIIEpAIBAAKCAQEA7\n-----END KEY-----"
    masker = Masker(["abcd", "abcdefgh", key])
    assert masker.mask("abcdefgh abcd") == f"{REDACTED} {REDACTED}"
    reindented = "\n".join("    " + line for line in key.splitlines())
    assert "MIIEpAIBAAKCAQEA7" not in masker.mask(reindented)
    assert "abcd" not in repr(masker)


def test_with_secrets_adds_to_an_existing_masker() -> None:
    masker = Masker.from_secrets(["first-secret"]).with_secrets(["second-secret"])
    assert masker.mask("first-secret second-secret") == f"{REDACTED} {REDACTED}"


# --- rendering --------------------------------------------------------------------------


def test_plan_comment_with_changes() -> None:
    result = plan_result("changes")
    markdown = render_plan_comment([result], commit=SHA, masker=Masker())
    assert markdown.startswith("### `gitops plan` at `0123456` · 1 project\n")
    assert "#### `changes` · dir `infra/changes` · workspace `default`" in markdown
    assert "**Why:** changed infra/changes/main.tf" in markdown
    assert "Plan: 2 to add, 1 to change, 1 to destroy, 1 to replace, 1 to import.\n" in markdown
    assert "<details><summary>Show output</summary>\n\n```diff\n" in markdown
    assert '\n+  + resource "terraform_data" "added" {\n' in markdown
    assert '\n-  - resource "terraform_data" "removed" {\n' in markdown
    assert '\n!-/+ resource "terraform_data" "replaced" {\n' in markdown
    assert "- Apply one project: `gitops apply -p changes`" in markdown
    assert "`gitops apply`" in markdown and "`gitops unlock`" in markdown


def test_plan_comment_without_changes_and_with_drift() -> None:
    markdown = render_plan_comment([plan_result("no_changes"), plan_result("drift")], commit=SHA)
    assert "· 2 projects" in markdown
    assert "1 with changes, 1 without changes, 0 failed." in markdown
    assert "\nNo changes.\n" in markdown
    assert "Plan: 1 to add, 1 to change, 0 to destroy. 2 changed outside of Terraform." in markdown
    assert "gitops apply -p drift" in markdown
    assert "gitops apply -p no_changes" not in markdown


def test_plan_comment_with_an_error() -> None:
    markdown = render_plan_comment([error_result()], commit=None)
    assert "\n**Error**\n\n```text\nTerraform exited with code 1\n" in markdown
    assert "Error: Invalid file content" in markdown
    assert "Plan a failed project again: `gitops plan -p broken`" in markdown
    assert "gitops apply -p" not in markdown


def test_secrets_never_reach_the_rendered_markdown() -> None:
    """Every field carries a secret, unmasked; only the render-time masker stands guard."""
    values = secret_values()
    env_secret = "srv-secret-9d8c7b6a"
    leaky = "\n".join([*values.values(), env_secret, "https://bot:ghp_tokentoken@github.com/o"])
    results = [
        plan_result("changes", output=text("changes.plan.txt") + leaky, reason=env_secret),
        error_result(),  # its stderr quotes the sensitive db_password
        plan_result("drift", project=f"p-{env_secret}"),
    ]
    assert values["db_password"] in results[1].error
    masker = Masker.from_plan(plan_json("changes")).with_secrets([env_secret])

    markdown = render_plan_comment(results, commit=SHA, masker=masker)
    for secret in [*values.values(), env_secret, "ghp_tokentoken"]:
        assert secret not in markdown
    assert f'content "db_password={REDACTED}; pool_size=20;' in markdown

    apply = ApplyResult("x", ".", "default", ApplyStatus.FAILED, output=leaky, error=leaky)
    assert env_secret not in render_apply_comment([apply], masker=masker)
    assert env_secret not in render_message("error", message=leaky, masker=masker)


def test_diff_marks_keep_the_original_text() -> None:
    output = text("drift.plan.txt")
    marked = as_diff(output).split("\n")
    assert [line[1:] for line in marked] == output.rstrip("\n").split("\n")
    assert {line[0] for line in marked} == {" ", "+", "-", "!"}


def test_output_containing_fences_gets_a_longer_fence() -> None:
    result = plan_result("no_changes", output="```\nnot the end\n````\n")
    markdown = render_plan_comment([result])
    assert "\n`````diff\n" in markdown and "\n`````\n" in markdown


def test_summary_line_mentions_only_non_zero_extras() -> None:
    assert (
        summary_line(PlanSummary(add=2, change=1)) == "Plan: 2 to add, 1 to change, 0 to destroy."
    )
    assert summary_line(PlanSummary(drifted=3)) == "No changes. 3 changed outside of Terraform."


def test_apply_comment() -> None:
    applied = ApplyResult(
        "network",
        "infra/network",
        "default",
        ApplyStatus.APPLIED,
        summary=PlanSummary(add=1),
        output="terraform_data.a: Creating...\nApply complete! Resources: 1 added.",
    )
    failed = ApplyResult("dns", "infra/dns", "prod", ApplyStatus.FAILED, error="Error: boom")
    markdown = render_apply_comment([applied, failed], commit=SHA)
    assert markdown.startswith("### `gitops apply` at `0123456` · 2 projects\n")
    assert "1 applied, 1 failed." in markdown
    assert "**Applied.** Plan: 1 to add, 0 to change, 0 to destroy." in markdown
    assert "**Error**\n\n```text\nError: boom\n```" in markdown
    assert "`gitops plan -p dns`" in markdown


def test_short_messages() -> None:
    locked = render_message(
        "lock_conflict", project="network", dir="infra", workspace="default", holder="#12"
    )
    assert "`network`" in locked and "locked by #12" in locked
    help_text = render_message("help", commands=[("gitops plan [-p A | -d B]", "Plan *all*.")])
    assert "| `gitops plan [-p A \\| -d B]` | Plan \\*all\\*. |" in help_text
    assert render_message("no_projects", command="plan").startswith("`gitops plan`: no project")
    with pytest.raises(ValueError, match="unknown message kind"):
        render_message("nope")  # type: ignore[arg-type]


# --- splitting --------------------------------------------------------------------------

_FENCE_OPEN = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")
_FENCE_CLOSE = re.compile(r" {0,3}(`{3,}|~{3,})[ \t]*")


def block_balance(markdown: str) -> tuple[str | None, int, int]:
    """(open fence, <details> depth at the end, lowest depth seen): an oracle for tests."""
    fence, depth, lowest = None, 0, 0
    for line in markdown.split("\n"):
        if fence is not None:
            close = _FENCE_CLOSE.fullmatch(line)
            if close and close[1][0] == fence[0] and len(close[1]) >= len(fence):
                fence = None
            continue
        opening = _FENCE_OPEN.fullmatch(line)
        if opening and not (opening[1][0] == "`" and "`" in opening[2]):
            fence = opening[1]
            continue
        depth += len(re.findall(r"<details(?=[\s>])", line)) - line.count("</details>")
        lowest = min(lowest, depth)
    return fence, depth, lowest


def random_text(rng: random.Random, length: int) -> str:
    """Text with characters that could confuse a splitter: backticks, tildes, tags."""
    alphabet = "abcdefgh    `~<>/-+#|"
    chars = rng.choices(alphabet, k=length)
    if length > 10 and rng.random() < 0.3:
        at = rng.randrange(length - 5)
        chars[at : at + 3] = rng.choice(["```", "~~~"])
    return "".join(chars).lstrip("`~ ")  # a plain line never starts like a fence


def random_document(rng: random.Random, cap: int) -> str:
    """A balanced document: paragraphs, fences (with fence-like lines inside), details."""
    lines: list[str] = []

    def text_line() -> str:
        roll = rng.random()
        if roll < 0.1:
            return ""
        if roll < 0.2:
            return random_text(rng, rng.randint(cap, 3 * cap))  # longer than a part
        return random_text(rng, rng.randint(0, cap // 4))

    def fence_block() -> None:
        run = rng.choice(["```", "````", "~~~", "~~~~~"])
        lines.append(run + rng.choice(["", "diff", "text", " hcl title"]))
        for _ in range(rng.randint(0, 30)):
            roll = rng.random()
            if roll < 0.1:
                lines.append(run[0] * (len(run) - 1))  # too short to close
            elif roll < 0.2:
                lines.append("<details><summary>inside a fence</summary>")
            elif roll < 0.25 and run[0] == "~":
                lines.append("```")
            else:
                lines.append(text_line())
        lines.append(run)

    def details_block(depth: int) -> None:
        lines.extend(["<details><summary>Show output</summary>", ""])
        body(depth + 1)
        lines.append("</details>")

    def body(depth: int) -> None:
        for _ in range(rng.randint(1, 6)):
            roll = rng.random()
            if roll < 0.3:
                fence_block()
            elif roll < 0.45 and depth < 2:
                details_block(depth)
            else:
                lines.extend(text_line() for _ in range(rng.randint(1, 8)))

    body(0)
    return "\n".join(lines)


def original_lines(parts: list[CommentPart]) -> list[str]:
    lines: list[str] = []
    for part in parts:
        body = list(part.body)
        if part.continues_line:
            lines[-1] += body.pop(0)
        lines.extend(body)
    return lines


def check_split(markdown: str, cap: int) -> list[CommentPart]:
    parts = split_comment_parts(markdown, cap)
    texts = split_comment(markdown, cap)
    assert texts == [part.text for part in parts]
    assert all(len(t) <= cap for t in texts), [len(t) for t in texts]
    assert original_lines(parts) == markdown.split("\n")
    assert parts[0].head == () and not parts[0].continues_line
    for k, (part, part_text) in enumerate(zip(parts, texts, strict=True), start=1):
        assert part_text == "\n".join((*part.head, *part.body, *part.tail))
        if k > 1:
            assert part_text.startswith(f"*continued ({k}/{len(parts)})*\n")
        assert block_balance(part_text) == (None, 0, 0), f"part {k}/{len(parts)}"
    return parts


@pytest.mark.parametrize("cap", [300, 1_000, 4_000])
@pytest.mark.parametrize("seed", range(60))
def test_split_properties_on_generated_documents(seed: int, cap: int) -> None:
    rng = random.Random(seed * 1_000 + cap)
    markdown = random_document(rng, cap)
    assert block_balance(markdown) == (None, 0, 0)  # the generator's own promise
    parts = check_split(markdown, cap)
    if len(markdown) > cap:
        assert len(parts) > 1


def test_split_a_real_comment_at_github_and_small_caps() -> None:
    results = [plan_result("changes", project=f"p{i}") for i in range(40)]
    markdown = render_plan_comment([*results, error_result()], commit=SHA)
    assert len(markdown) > 65_536
    parts = check_split(markdown, 65_536)
    assert parts[1].head[2:4] == ("<details><summary>Show output</summary>", "")
    for cap in (2_000, 10_000, 1_000_000):
        check_split(markdown, cap)


def test_a_comment_within_the_cap_is_one_part() -> None:
    assert split_comment("a\n```\nb", cap=8) == ["a\n```\nb"]


def test_a_long_line_is_cut_and_the_fence_reopened() -> None:
    markdown = "```diff\n" + "x" * 250 + "\n```"
    parts = check_split(markdown, 100)
    assert len(parts) >= 4 and [p.continues_line for p in parts[2:-1]] == [True] * (len(parts) - 3)
    assert parts[0].tail == ("```",) and parts[1].head[2:] == ("```diff",)


def test_marker_width_grows_past_nine_parts() -> None:
    parts = check_split("\n".join(["y" * 40] * 40), 100)
    assert len(parts) >= 10
    assert parts[-1].head[0] == f"*continued ({len(parts)}/{len(parts)})*"


def test_cap_too_small_for_the_blocks_is_refused() -> None:
    markdown = "<details>\n\n" * 3 + "```\n" + "z" * 500 + "\n```" + "\n</details>" * 3
    with pytest.raises(ValueError, match="cap 60"):
        split_comment(markdown, cap=60)
    check_split(markdown, cap=120)


def test_an_overlong_details_line_is_reopened_in_short_form() -> None:
    markdown = "<details><summary>" + "s" * 150 + "</summary>\n\n" + "z\n" * 200 + "</details>"
    parts = check_split(markdown, cap=150)
    assert parts[-1].head[2:] == ("<details>", "")


def test_cuts_do_not_create_fences_or_split_tags() -> None:
    line = ("ab" + "`" * 3 + "cd<details>ef</details>") * 40
    for cap in (80, 97, 150):
        check_split(line, cap)
    in_fence = "~~~\n" + ("q" * 20 + "~~~ ") * 30 + "\n~~~"
    for cap in (41, 64, 90):
        check_split(in_fence, cap)
