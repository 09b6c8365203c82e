"""Owners' approvals of failing policy sets, per saved plan (`gitops approve_policies`)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from runner.store.db import Database
from runner.store.models import PolicyApproval, utcnow


class PolicyApprovalStore:
    """Record approvals; read who approved which set of a plan."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def approve(self, plan_id: int, policy_set: str, user: str) -> None:
        """Remember that `user` approved `policy_set` for this plan; twice is once."""
        row = PolicyApproval(
            plan_id=plan_id, policy_set=policy_set, user=user.casefold(), created_at=utcnow()
        )
        try:
            with self._db.write() as session:
                session.add(row)
        except IntegrityError:
            pass  # already approved by this user

    def approvals(self, plan_id: int) -> dict[str, set[str]]:
        """{policy set: users who approved it} for one plan."""
        query = select(PolicyApproval.policy_set, PolicyApproval.user).where(
            PolicyApproval.plan_id == plan_id
        )
        found: dict[str, set[str]] = {}
        with self._db.read() as session:
            for policy_set, user in session.execute(query):
                found.setdefault(policy_set, set()).add(user)
        return found
