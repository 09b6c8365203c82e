"""Read `terraform show -json PLANFILE` into counts, planned changes and drift.

The JSON plan is Terraform's stable machine interface (format_version 1.x): what is
recorded, compared at merge and checked by policies comes from it alone. Only
`resource_changes` and `resource_drift` are read.

A pull request's plan comment may come first, with the counts Terraform printed
(`summary_from_output`): reading the JSON plan is one more Terraform start per project,
and the comment need not wait for it (docs/terraform.md, "Reading the plan after the
comment"). Any output whose counts this does not recognise gives None, and the JSON
plan is read before the comment as before.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from runner.results.model import DriftedResource, PlanSummary, ResourceChange

# Actions that are not changes: data sources being read, unchanged objects.
_INERT = frozenset({("no-op",), ("read",)})
_REPLACE = frozenset({("delete", "create"), ("create", "delete")})


@dataclass(frozen=True)
class PlanDigest:
    """Everything the runner keeps from a JSON plan (values are deliberately left out)."""

    summary: PlanSummary
    changes: tuple[ResourceChange, ...]
    drift: tuple[DriftedResource, ...]

    @property
    def changes_hash(self) -> str:
        return normalized_changes_hash(self.changes)

    @property
    def drift_hash(self) -> str:
        return normalized_changes_hash(self.drift)

    @property
    def content_hash(self) -> str:
        return changes_content_hash(self.changes)


def summarize_plan(plan_json: Mapping[str, Any]) -> PlanDigest:
    """Count and list what a plan would do and what drifted since the last apply."""
    drift_entries = plan_json.get("resource_drift") or ()
    before_drift = {
        entry["address"]: (entry.get("change") or {}).get("before") for entry in drift_entries
    }
    changes = tuple(_planned_changes(plan_json.get("resource_changes") or (), before_drift))
    drift = tuple(_drifted_resources(drift_entries))
    return PlanDigest(summary=_count(changes, drift), changes=changes, drift=drift)


# Terraform's closing sentence of a plan with changes (`-no-color`), since 1.5:
# "Plan: [N to import, ]N to add, N to change, N to destroy[, N to forget]."
_PLAN_SENTENCE = re.compile(
    r"^Plan: (?:(?P<import_>\d+) to import, )?(?P<add>\d+) to add, (?P<change>\d+) to change, "
    r"(?P<destroy>\d+) to destroy(?:, \d+ to forget)?\.$",
    re.MULTILINE,
)
# A resource's header line ends with what the plan does to it; the address before that
# may hold any text (map keys), so only the ending is read.
_CREATED, _DESTROYED, _UPDATED = "will be created", "will be destroyed", "will be updated in-place"
_REPLACED = (
    "must be replaced",
    "will be replaced, as requested",
    "will be replaced due to changes in replace_triggered_by",
)
_DRIFTED = ("has changed", "has been deleted")
_ENDINGS = (_CREATED, _DESTROYED, _UPDATED, *_REPLACED, *_DRIFTED)
_HEADER = re.compile(
    r"^ *# \S.* (?P<action>" + "|".join(map(re.escape, _ENDINGS)) + ")$", re.MULTILINE
)


def summary_from_output(output: str) -> PlanSummary | None:
    """The counts of a plan with changes as Terraform printed them (`plan -no-color`);
    None when the output has no sentence this recognises (then read the JSON plan).

    Only what comes before the sentence is read (diagnostics, which may quote a PR's
    text, come after it), and the headers must add up to the sentence: a created or
    replaced object per "to add", a destroyed or replaced one per "to destroy", an updated
    one per "to change". Text that imitates a header breaks the sum, and the JSON plan
    is read instead.
    """
    sentences = list(_PLAN_SENTENCE.finditer(output))
    if len(sentences) != 1:
        return None
    counts = sentences[0]
    actions = [match["action"] for match in _HEADER.finditer(output, 0, counts.start())]
    replaced = sum(action in _REPLACED for action in actions)
    add, destroy, change = (actions.count(a) for a in (_CREATED, _DESTROYED, _UPDATED))
    printed = (int(counts["add"]), int(counts["change"]), int(counts["destroy"]))
    if printed != (add + replaced, change, destroy + replaced):
        return None
    return PlanSummary(
        add=add,
        change=change,
        destroy=destroy,
        replace=replaced,
        import_=int(counts["import_"] or 0),
        drifted=sum(action in _DRIFTED for action in actions),
    )


def normalized_changes_hash(changes: Iterable[ResourceChange]) -> str:
    """A sha256 over addresses, actions and imports only, independent of order.

    Two plans with the same hash do the same things to the same objects, whatever
    their attribute values or the order Terraform listed them in: this is how a
    pull-request plan is compared with the plan made on merge, and how a drift alert
    that was already sent is recognised.
    """
    lines = sorted(
        json.dumps([change.address, list(change.actions), change.importing]) for change in changes
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def changes_content_hash(changes: Iterable[ResourceChange]) -> str:
    """A sha256 over addresses, actions, imports **and attribute values**, order-free.

    What a merge plan must equal to be applied: the same objects changed the same way
    to the same values. Values unknown until apply compare as unknown.
    """
    lines = sorted(
        json.dumps([change.address, list(change.actions), change.importing, change.values])
        for change in changes
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def content_differences(
    reviewed: Iterable[ResourceChange], planned: Iterable[ResourceChange]
) -> list[str]:
    """What `planned` does that `reviewed` did not, one line per object, for people.

    `+` only in the new plan, `-` only in the reviewed one, `~` the same action with
    other attribute values (or values the reviewed plan did not record).
    """
    before = {change.address: change for change in reviewed}
    after = {change.address: change for change in planned}
    lines: list[str] = []
    for address in sorted(before.keys() | after.keys()):
        old, new = before.get(address), after.get(address)
        if old is None or new is None or old.actions != new.actions:
            if old is not None:
                lines.append(f"- `{address}` {'/'.join(old.actions)}")
            if new is not None:
                lines.append(f"+ `{address}` {'/'.join(new.actions)}")
        elif old.importing != new.importing or not old.values or old.values != new.values:
            lines.append(f"~ `{address}` {'/'.join(new.actions)}: other attribute values")
    return lines


def _values_digest(change: Mapping[str, Any]) -> str:
    keys = ("before", "after", "after_unknown", "before_sensitive", "after_sensitive")
    material = json.dumps({key: change.get(key) for key in keys}, sort_keys=True)
    return hashlib.sha256(material.encode()).hexdigest()


def _planned_changes(
    entries: Iterable[Mapping[str, Any]], before_drift: Mapping[str, Any]
) -> Iterable[ResourceChange]:
    for entry in entries:
        change = entry.get("change") or {}
        actions = tuple(change.get("actions") or ())
        importing = bool(change.get("importing"))
        if actions in _INERT and not importing:
            continue
        yield ResourceChange(
            entry["address"],
            actions,
            importing=importing,
            values=_values_digest(change),
            attributes=_planned_attributes(change),
            reverts_drift=_puts_back(change, before_drift.get(entry["address"], _ABSENT)),
        )


_ABSENT = object()


def _puts_back(change: Mapping[str, Any], before_drift: Any) -> bool:
    """Whether the change only restores the object as it was before it drifted.

    Every value the plan knows must equal the value from before the drift (values
    known only after apply, such as a new id, are not compared). A change of a value
    nobody changed outside Terraform (a pending change on the default branch) is not
    a restoration, whatever its action.
    """
    after = change.get("after")
    if before_drift is _ABSENT or not isinstance(after, Mapping):
        return False
    if not isinstance(before_drift, Mapping):
        return False
    unknown = change.get("after_unknown")
    unknown_keys = {k for k, v in unknown.items() if v} if isinstance(unknown, Mapping) else set()
    return all(
        before_drift.get(key) == value for key, value in after.items() if key not in unknown_keys
    )


def _drifted_resources(entries: Iterable[Mapping[str, Any]]) -> Iterable[DriftedResource]:
    """Objects changed or deleted outside of Terraform.

    Terraform also lists objects that only moved (`moved` blocks) as drift with a
    "no-op" action; those are refactorings, not outside changes, so they are skipped.
    """
    for entry in entries:
        change = entry.get("change") or {}
        actions = tuple(change.get("actions") or ())
        if actions in _INERT:
            continue
        attributes = _changed_attributes(change.get("before"), change.get("after"))
        yield DriftedResource(entry["address"], actions, attributes)


def _planned_attributes(change: Mapping[str, Any]) -> tuple[str, ...]:
    """Attributes an update sets: changed values, and values known only after apply."""
    unknown = change.get("after_unknown")
    later = {k for k, v in unknown.items() if v} if isinstance(unknown, Mapping) else set()
    changed = set(_changed_attributes(change.get("before"), change.get("after")))
    return tuple(sorted(changed | later))


def _changed_attributes(before: Any, after: Any) -> tuple[str, ...]:
    """Top-level attribute names whose value differs; none when the object is gone."""
    if not isinstance(before, Mapping) or not isinstance(after, Mapping):
        return ()
    keys = before.keys() | after.keys()
    return tuple(sorted(key for key in keys if before.get(key) != after.get(key)))


def _count(changes: tuple[ResourceChange, ...], drift: tuple[DriftedResource, ...]) -> PlanSummary:
    """Replace is its own count (Terraform's summary adds it to both add and destroy)."""
    actions = [change.actions for change in changes]
    return PlanSummary(
        add=actions.count(("create",)),
        change=actions.count(("update",)),
        destroy=actions.count(("delete",)),
        replace=sum(1 for a in actions if a in _REPLACE),
        import_=sum(1 for change in changes if change.importing),
        drifted=len(drift),
    )
