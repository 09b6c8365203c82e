"""HTTPS credentials for git, handed over per command and never stored.

A token written into `.git/config`, a remote URL, a log line or an exception
message outlives the process and ends up in backups, bug reports and PR comments.
So the token only ever travels in the environment of the one git process that
needs it, as an `http.extraHeader` set through `GIT_CONFIG_COUNT`/`KEY`/`VALUE`
(git >= 2.31), and every text that leaves this package goes through `scrub`.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit, urlunsplit

# GitHub's documented user name for installation and personal tokens.
TOKEN_USERNAME = "x-access-token"
# GitLab's documented user name for a token as a password: required for OAuth tokens,
# accepted with personal, project and group access tokens.
GITLAB_TOKEN_USERNAME = "oauth2"
REDACTED = "***"

# Userinfo in an http(s) URL inside any text: `https://user:pass@` -> `https://***@`.
_USERINFO = re.compile(r"(?P<scheme>https?://)[^/@\s]+@", re.IGNORECASE)


@dataclass(frozen=True)
class HttpAuth:
    """Basic-auth credentials for one HTTPS remote. The token is kept out of `repr`."""

    token: str = field(repr=False)
    username: str = TOKEN_USERNAME

    @property
    def header_value(self) -> str:
        """`Authorization: Basic …`: what git sends with every HTTP request."""
        pair = f"{self.username}:{self.token}".encode()
        return "Authorization: Basic " + base64.b64encode(pair).decode("ascii")

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every spelling of the token that could show up in git's output."""
        encoded = base64.b64encode(f"{self.username}:{self.token}".encode()).decode("ascii")
        spellings = {self.token, quote(self.token, safe=""), encoded}
        # Longest first, so a spelling containing another is replaced whole.
        return tuple(sorted((s for s in spellings if s), key=len, reverse=True))


def is_http_url(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def split_credentials(url: str) -> tuple[str, HttpAuth | None]:
    """Split `https://user:token@host/…` into the bare URL and its credentials.

    Any userinfo of an http(s) URL is taken as secret: `https://TOKEN@host/…` is how
    GitHub tokens are often written, and without a password (prompts are off) a
    plain user name could not authenticate anyway. ssh URLs are left alone: their
    `git@` is no secret and the key lives elsewhere.
    """
    if not is_http_url(url):
        return url, None
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal lost its brackets in `hostname`
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    clean = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    if not password:
        return clean, HttpAuth(token=user) if user else None
    return clean, HttpAuth(token=password, username=user or TOKEN_USERNAME)


def git_env(auth: HttpAuth | None, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment additions for one git command.

    Any `GIT_CONFIG_COUNT` entries the operator already set in `base` are kept:
    ours is appended after them, so it wins over an earlier `http.extraHeader`.
    """
    env = {
        # Fail instead of waiting for a password nobody will type.
        "GIT_TERMINAL_PROMPT": "0",
        # Should someone enable GIT_TRACE_CURL, keep the Authorization header out of it.
        "GIT_TRACE_REDACT": "1",
    }
    if auth is None:
        return env
    current = os.environ if base is None else base
    try:
        index = int(current.get("GIT_CONFIG_COUNT", "0"))
    except ValueError:
        index = 0
    env.update(
        {
            "GIT_CONFIG_COUNT": str(index + 1),
            f"GIT_CONFIG_KEY_{index}": "http.extraHeader",
            f"GIT_CONFIG_VALUE_{index}": auth.header_value,
        }
    )
    return env


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` without the given secrets and without credentials embedded in URLs."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return _USERINFO.sub(lambda m: m.group("scheme") + REDACTED + "@", text)
