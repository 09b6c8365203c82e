"""Kept JSON plans hold plan values: they are deleted after the retention, hourly at most."""

from __future__ import annotations

import os
import time
from pathlib import Path

from runner.engine.planner import kept_plan_documents
from runner.policies.plans import PlanDocuments
from runner.settings import load_settings

DAY = 86400.0
OLD, FRESH, NEXT = "a" * 64, "b" * 64, "c" * 64


def age(path: Path, days: float) -> None:
    """Pretend `path` was last written `days` ago."""
    then = time.time() - days * DAY
    os.utime(path, (then, then))


def test_a_plan_older_than_the_retention_is_deleted_when_the_next_one_is_saved(tmp_path):
    documents = PlanDocuments(tmp_path, retention_days=30)
    old = documents.save(OLD, {"resource_changes": []})
    fresh = documents.save(FRESH, {"resource_changes": []})
    age(old, 31)
    age(fresh, 29)
    age(tmp_path / ".pruned", 1 / 24 + 0.01)  # the last pruning was over an hour ago

    documents.save(NEXT, {})

    assert not old.exists() and documents.load(OLD) is None
    assert documents.load(FRESH) is not None and documents.load(NEXT) is not None


def test_pruning_runs_at_most_once_an_hour(tmp_path):
    documents = PlanDocuments(tmp_path, retention_days=30)
    documents.save(FRESH, {})  # prunes (nothing yet) and marks the hour
    old = documents.save(OLD, {})
    age(old, 31)

    documents.save(NEXT, {})
    assert old.exists()  # pruned less than an hour ago: not walked again

    assert documents.prune_if_due(now=time.time() + 3601) == 1
    assert not old.exists()


def test_the_retention_comes_from_the_settings(tmp_path):
    settings = load_settings(data_dir=tmp_path, plan_json_retention_days=2)
    documents = kept_plan_documents(settings)
    old = documents.save(OLD, {})
    age(old, 3)

    assert documents.prune_if_due(now=time.time() + 3601) == 1
