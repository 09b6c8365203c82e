"""ORM models: the tables of the store.

Only the store's repositories import these; everything outside `runner/store/`
receives frozen dataclasses, so no caller ever holds a session or a lazy attribute.
Statuses are plain strings validated in Python (see `values.py`), not database
enums: adding a status must not need a migration.

The schema itself is owned by the Alembic migrations in `migrations/versions/`;
these models must stay in step with them (a test compares the two).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Deterministic constraint names, so later migrations can refer to them on both backends.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# Statuses in which a job still occupies its dedupe key.
ACTIVE_JOB_STATUSES = ("queued", "running")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that always comes back timezone-aware in UTC.

    SQLite has no timezone-aware type and returns naive values; PostgreSQL returns
    the session's zone. Normalising here keeps comparisons and rendering uniform.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


class Run(Base):
    """One Terraform command for one project (plan, apply, drift check, ...)."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repo: Mapped[str] = mapped_column(String(255))
    pr_number: Mapped[int | None]  # None: drift check or CLI
    project: Mapped[str] = mapped_column(String(255))
    dir: Mapped[str] = mapped_column(String(1024))
    workspace: Mapped[str] = mapped_column(String(255))
    command: Mapped[str] = mapped_column(String(32))
    trigger: Mapped[str] = mapped_column(String(32))
    commit_sha: Mapped[str | None] = mapped_column(String(64))
    author: Mapped[str | None] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    add_count: Mapped[int | None]
    change_count: Mapped[int | None]
    destroy_count: Mapped[int | None]
    replace_count: Mapped[int | None]
    import_count: Mapped[int | None]
    drifted_count: Mapped[int | None]
    log_path: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    # `host:pid:start` of the process running it: a run still "running" whose process
    # is gone was interrupted (runner/jobs/recovery.py).
    owner: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (
        Index("ix_runs_repo_pr_number", "repo", "pr_number"),
        Index("ix_runs_started_at", "started_at"),
    )


class Plan(Base):
    """A saved plan file, so an apply can use exactly what was reviewed."""

    __tablename__ = "plans"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    repo: Mapped[str] = mapped_column(String(255))
    pr_number: Mapped[int | None]
    project: Mapped[str] = mapped_column(String(255))
    dir: Mapped[str] = mapped_column(String(1024))
    workspace: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(Text)
    commit_sha: Mapped[str] = mapped_column(String(64))
    checksum: Mapped[str] = mapped_column(String(64))  # sha256 hex of the plan file
    changes_json: Mapped[str] = mapped_column(Text)  # [{"address": ..., "actions": [...]}]
    # sha256 over addresses, actions and attribute values (runner/results/summary.py):
    # what a merge plan is compared on. NULL for plans recorded before 0005.
    content_hash: Mapped[str | None] = mapped_column(String(64))
    # False: asked for by someone without write permission; shown, never applied.
    trusted: Mapped[bool] = mapped_column(default=True, server_default=true())
    created_at: Mapped[datetime]
    discarded_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_plans_repo_pr_number", "repo", "pr_number"),
        Index("ix_plans_run_id", "run_id"),
    )


class Lock(Base):
    """Who may plan/apply a (repo, dir, workspace) right now; the unique key is the lock."""

    __tablename__ = "locks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repo: Mapped[str] = mapped_column(String(255))
    dir: Mapped[str] = mapped_column(String(1024))
    workspace: Mapped[str] = mapped_column(String(255))
    owner_pr: Mapped[int | None]
    owner_pr_url: Mapped[str | None] = mapped_column(Text)
    owner_user: Mapped[str | None] = mapped_column(String(255))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    since: Mapped[datetime]

    __table_args__ = (
        UniqueConstraint("repo", "dir", "workspace", name="uq_locks_repo_dir_workspace"),
        Index("ix_locks_repo_owner_pr", "repo", "owner_pr"),
    )


class Delivery(Base):
    """A webhook delivery id already handled; forges redeliver, we act once."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[str] = mapped_column(String(255), unique=True)
    forge: Mapped[str] = mapped_column(String(32))
    event: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(index=True)


class Job(Base):
    """A unit of queued work that must survive a restart of the runner."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    version: Mapped[int]  # format version of `payload`, see jobs.JOB_FORMAT_VERSION
    payload: Mapped[str] = mapped_column(Text)  # JSON object
    status: Mapped[str] = mapped_column(String(32))
    dedupe_key: Mapped[str | None] = mapped_column(String(512))
    # The PR group (`jobs.model.pr_group`); NULL for rows written before 0004.
    group_key: Mapped[str | None] = mapped_column(String(512))
    attempts: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(255))
    lease_expires_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_jobs_status_id", "status", "id"),
        # Superseding reads the active jobs of one PR group (runner/jobs/cancellation.py).
        Index("ix_jobs_group_key_status", "group_key", "status"),
        # At most one queued-or-running job per dedupe key; enforced by the database so
        # two processes enqueueing the same work at once still create one job.
        Index(
            "uq_jobs_active_dedupe_key",
            "dedupe_key",
            unique=True,
            sqlite_where=text("status IN ('queued', 'running') AND dedupe_key IS NOT NULL"),
            postgresql_where=text("status IN ('queued', 'running') AND dedupe_key IS NOT NULL"),
        ),
    )


class Comment(Base):
    """A comment we posted on a PR, so older plan comments can be marked outdated."""

    __tablename__ = "comments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    repo: Mapped[str] = mapped_column(String(255))
    pr_number: Mapped[int]
    comment_id: Mapped[str] = mapped_column(String(255))  # forge's id, as text for all forges
    kind: Mapped[str] = mapped_column(String(32))
    commit_sha: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    outdated_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("repo", "pr_number", "comment_id", name="uq_comments_repo_pr_comment"),
    )


class PolicyApproval(Base):
    """An owner's `gitops approve_policies` of one failing policy set of one saved plan.

    Keyed by the plan: a new plan of the project is a new row in `plans`, so earlier
    approvals no longer count without anything being deleted (the audit trail stays).
    """

    __tablename__ = "policy_approvals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("plans.id", ondelete="CASCADE"))
    policy_set: Mapped[str] = mapped_column(String(255))
    user: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]

    __table_args__ = (
        UniqueConstraint("plan_id", "policy_set", "user", name="uq_policy_approvals_plan_set_user"),
    )


class ApiToken(Base):
    """An API token (`gitops-runner token create`): only the SHA-256 of its secret is kept.

    Revoked tokens stay as rows (revoked_at set), so `token list` shows what existed.
    """

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
