"""`Authorization: Bearer <token>`: stored API tokens and the bootstrap GITOPS_API_TOKEN.

A request that sends a Bearer header is judged by that header alone: a wrong token
is refused even if a session cookie comes along, so a script never acts as whoever
happens to be signed in in the same browser.
"""

from __future__ import annotations

import hmac

from runner.store.tokens import TokenStore
from runner.web.auth.roles import Principal, Role

BOOTSTRAP_NAME = "GITOPS_API_TOKEN"
_SCHEME = "bearer"


def presented_bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer ...` header; "" for a Bearer header
    without one; None when the header is absent or another scheme."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != _SCHEME:
        return None
    return token.strip()


def principal_for_token(secret: str, tokens: TokenStore, bootstrap: str | None) -> Principal | None:
    """The principal a Bearer secret stands for, or None (wrong, revoked or expired)."""
    if not secret:
        return None
    # Compared in constant time, and always, so the timing never says which kind it was.
    if bootstrap and hmac.compare_digest(secret.encode(), bootstrap.encode()):
        return Principal(BOOTSTRAP_NAME, Role.OPERATOR, "token")
    record = tokens.authenticate(secret)
    if record is None:
        return None
    return Principal(f"token:{record.name}", Role.parse(record.role), "token")
