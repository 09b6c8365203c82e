"""Webhook authenticity checks, run on the raw request before any JSON is parsed.

Both functions refuse an empty secret: a runner configured without one would
otherwise accept anything signed with the empty key, i.e. anything at all.
Comparisons use `hmac.compare_digest` so response timing reveals nothing about
how much of a forged value was right.
"""

from __future__ import annotations

import hashlib
import hmac

_GITHUB_PREFIX = "sha256="


def verify_github_signature(body: bytes, header: str | None, secret: str) -> bool:
    """True when `X-Hub-Signature-256` is the HMAC-SHA256 of the exact body bytes.

    The legacy SHA-1 `X-Hub-Signature` is deliberately not accepted.
    """
    if not secret or not header or not header.startswith(_GITHUB_PREFIX):
        return False
    expected = _GITHUB_PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    # Bytes, not str: compare_digest raises on non-ASCII str, and a header is attacker input.
    return hmac.compare_digest(expected.encode(), header.strip().encode("utf-8", "replace"))


def verify_gitlab_token(header: str | None, secret: str) -> bool:
    """True when `X-Gitlab-Token` equals the configured secret (GitLab sends it verbatim)."""
    if not secret or header is None:
        return False
    return hmac.compare_digest(secret.encode(), header.encode("utf-8", "replace"))
