"""API tokens: create, list, revoke, and find the live token a secret belongs to.

Only the SHA-256 of a secret is stored. A secret is 256 random bits, so a plain hash
is enough (no salt or slow hash: nothing to brute-force), and the lookup by hash
reveals nothing through timing that would help guess a secret. The role is a plain
string ("viewer" / "operator"); `runner/web/auth/roles.py` gives it meaning.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, update

from runner.store.db import Database
from runner.store.models import ApiToken, utcnow

TOKEN_PREFIX = "gr_"  # recognisable in a leaked-secret scan
TOKEN_ROLES = ("viewer", "operator")
# `last_used_at` is a hint for people, not an audit log: one write a minute per token.
_LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class TokenRecord:
    """A stored token, without its secret (which is never stored)."""

    id: int
    name: str
    role: str
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None

    def usable(self, now: datetime) -> bool:
        """Not revoked and not expired at `now`."""
        expired = self.expires_at is not None and self.expires_at <= now
        return self.revoked_at is None and not expired


@dataclass(frozen=True)
class NewToken:
    """A token just created: its record and the secret, shown to its creator once."""

    record: TokenRecord
    secret: str


def hash_secret(secret: str) -> str:
    """The stored form of a secret (hex SHA-256)."""
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenStore:
    """Create, list, revoke and authenticate API tokens."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, name: str, role: str, expires_in: timedelta | None = None) -> NewToken:
        """A new token with a fresh secret; the secret is returned, only its hash kept."""
        if role not in TOKEN_ROLES:
            raise ValueError(f"role must be one of {', '.join(TOKEN_ROLES)}, not {role!r}")
        if not name.strip():
            raise ValueError("a token needs a name (who or what uses it)")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = utcnow()
        row = ApiToken(
            name=name.strip(),
            role=role,
            token_hash=hash_secret(secret),
            created_at=now,
            expires_at=now + expires_in if expires_in is not None else None,
        )
        with self._db.write() as session:
            session.add(row)
            session.flush()
            return NewToken(_record(row), secret)

    def list(self) -> list[TokenRecord]:
        """Every token, revoked and expired ones included, oldest first."""
        with self._db.read() as session:
            rows = session.scalars(select(ApiToken).order_by(ApiToken.id))
            return [_record(row) for row in rows]

    def revoke(self, token_id: int) -> TokenRecord | None:
        """Revoke a token at once; None if there is no such token. Twice is once."""
        with self._db.write() as session:
            row = session.get(ApiToken, token_id)
            if row is None:
                return None
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            return _record(row)

    def authenticate(self, secret: str) -> TokenRecord | None:
        """The usable token whose secret this is, or None; notes when it was last used."""
        digest = hash_secret(secret)
        with self._db.read() as session:
            row = session.scalars(select(ApiToken).where(ApiToken.token_hash == digest)).first()
            record = _record(row) if row is not None else None
        if record is None or not hmac.compare_digest(row.token_hash, digest):
            return None
        now = utcnow()
        if not record.usable(now):
            return None
        self._touch(record, now)
        return record

    def count_usable(self) -> int:
        """Tokens that would authenticate now (start-up asks: is any sign-in possible?)."""
        now = utcnow()
        query = select(func.count(ApiToken.id)).where(
            ApiToken.revoked_at.is_(None),
            or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > now),
        )
        with self._db.read() as session:
            return int(session.scalar(query) or 0)

    def _touch(self, record: TokenRecord, now: datetime) -> None:
        last = record.last_used_at
        if last is not None and now - last < _LAST_USED_RESOLUTION:
            return
        with self._db.write() as session:
            session.execute(
                update(ApiToken).where(ApiToken.id == record.id).values(last_used_at=now)
            )


def _record(row: ApiToken) -> TokenRecord:
    return TokenRecord(
        id=row.id,
        name=row.name,
        role=row.role,
        created_at=row.created_at,
        expires_at=row.expires_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )
