"""Read `terraform show -json PLANFILE` into counts, planned changes and drift.

The JSON plan is Terraform's stable machine interface (format_version 1.x), so the
counts never depend on parsing the human output, whose wording changes between
releases. Only `resource_changes` and `resource_drift` are read.
"""

from __future__ import annotations

import hashlib
import json
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


def summarize_plan(plan_json: Mapping[str, Any]) -> PlanDigest:
    """Count and list what a plan would do and what drifted since the last apply."""
    changes = tuple(_planned_changes(plan_json.get("resource_changes") or ()))
    drift = tuple(_drifted_resources(plan_json.get("resource_drift") or ()))
    return PlanDigest(summary=_count(changes, drift), changes=changes, drift=drift)


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


def _planned_changes(entries: Iterable[Mapping[str, Any]]) -> Iterable[ResourceChange]:
    for entry in entries:
        change = entry.get("change") or {}
        actions = tuple(change.get("actions") or ())
        importing = bool(change.get("importing"))
        if actions in _INERT and not importing:
            continue
        yield ResourceChange(entry["address"], actions, importing=importing)


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
