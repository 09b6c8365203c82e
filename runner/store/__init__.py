"""The persistent store: runs, plans, project locks, webhook deliveries, jobs, comments.

Open it with `Store.open(url)`; every method returns frozen dataclasses, never ORM
objects. See docs/store.md.
"""

from runner.store.comments import CommentRecord, CommentStore
from runner.store.db import Database, default_database_url, make_engine, migrate
from runner.store.deliveries import DeliveryStore
from runner.store.jobs import JOB_FORMAT_VERSION, JobRecord, JobStatus, JobStore
from runner.store.locks import LockInfo, LockOwner, LockResult, LockService
from runner.store.runs import PlanRecord, RunRecord, RunStatus, RunStore, Trigger
from runner.store.store import Store

__all__ = [
    "JOB_FORMAT_VERSION",
    "CommentRecord",
    "CommentStore",
    "Database",
    "DeliveryStore",
    "JobRecord",
    "JobStatus",
    "JobStore",
    "LockInfo",
    "LockOwner",
    "LockResult",
    "LockService",
    "PlanRecord",
    "RunRecord",
    "RunStatus",
    "RunStore",
    "Store",
    "Trigger",
    "default_database_url",
    "make_engine",
    "migrate",
]
