"""Comments the runner posted on pull requests.

Kept so that when a PR is planned again, the older plan comments can be found and
edited to say they are outdated (their plans were discarded), instead of leaving
several live-looking plan comments on one PR.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from runner.store.db import Database
from runner.store.models import Comment, utcnow


@dataclass(frozen=True)
class CommentRecord:
    id: int
    repo: str
    pr_number: int
    comment_id: str
    kind: str  # plan / apply / error / ...
    commit_sha: str | None
    created_at: datetime
    outdated_at: datetime | None


class CommentStore:
    """Record posted comments and find the ones a newer commit made outdated."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def record(
        self, repo: str, pr_number: int, comment_id: str | int, kind: str, commit_sha: str | None
    ) -> int:
        """Remember a comment we posted; recording the same comment again is a no-op."""
        row = Comment(
            repo=repo,
            pr_number=pr_number,
            comment_id=str(comment_id),
            kind=kind,
            commit_sha=commit_sha,
            created_at=utcnow(),
        )
        try:
            with self._db.write() as session:
                session.add(row)
                session.flush()
                return row.id
        except IntegrityError:
            existing = self._find(repo, pr_number, str(comment_id))
            if existing is None:
                raise
            return existing

    def _find(self, repo: str, pr_number: int, comment_id: str) -> int | None:
        statement = select(Comment.id).where(
            Comment.repo == repo, Comment.pr_number == pr_number, Comment.comment_id == comment_id
        )
        with self._db.read() as session:
            return session.scalar(statement)

    def list(
        self, repo: str, pr_number: int, kind: str | None = None
    ) -> builtins.list[CommentRecord]:
        """A PR's recorded comments, oldest first."""
        statement = (
            select(Comment)
            .where(Comment.repo == repo, Comment.pr_number == pr_number)
            .order_by(Comment.id)
        )
        if kind is not None:
            statement = statement.where(Comment.kind == kind)
        with self._db.read() as session:
            return [_record(row) for row in session.scalars(statement)]

    def mark_outdated(
        self, repo: str, pr_number: int, kind: str, current_commit: str
    ) -> builtins.list[CommentRecord]:
        """Flag a PR's `kind` comments about other commits as outdated and return them,
        so the caller edits each one once (already-flagged comments are not returned)."""
        statement = (
            update(Comment)
            .where(
                Comment.repo == repo,
                Comment.pr_number == pr_number,
                Comment.kind == kind,
                Comment.outdated_at.is_(None),
                (Comment.commit_sha != current_commit) | Comment.commit_sha.is_(None),
            )
            .values(outdated_at=utcnow())
            .returning(Comment)
        )
        with self._db.write() as session:
            rows = session.scalars(statement).all()
            return sorted((_record(row) for row in rows), key=lambda record: record.id)


def _record(row: Comment) -> CommentRecord:
    return CommentRecord(
        id=row.id,
        repo=row.repo,
        pr_number=row.pr_number,
        comment_id=row.comment_id,
        kind=row.kind,
        commit_sha=row.commit_sha,
        created_at=row.created_at,
        outdated_at=row.outdated_at,
    )
