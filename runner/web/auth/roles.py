"""Roles, who is signed in (`Principal`), and who may sign in at all (`AccessList`).

Two roles, ordered: a viewer reads everything; an operator may also act (unlock,
trigger plans and scans). People get their role from `GITOPS_DASHBOARD_VIEWERS` /
`GITOPS_DASHBOARD_OPERATORS`, recomputed on every request from the identity their
provider vouched for, so removing someone from the lists takes effect at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Literal

# How a principal proved who it is: an API token (Bearer), a browser session opened
# by a sign-in provider (OIDC, GitHub or GitLab OAuth), or nobody at all
# (GITOPS_DASHBOARD_AUTH=none).
How = Literal["token", "oidc", "anonymous"]


class Role(IntEnum):
    """Ordered, so `principal.role >= Role.OPERATOR` reads as the rule it is."""

    VIEWER = 1
    OPERATOR = 2

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        """`viewer` or `operator` (any case); ValueError names the choices."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown role {text!r}: viewer or operator") from None


@dataclass(frozen=True)
class Principal:
    """Who makes the current request, and with which role."""

    name: str
    role: Role
    how: How

    def may(self, role: Role) -> bool:
        return self.role >= role


@dataclass(frozen=True)
class Identity:
    """What a sign-in provider vouched for: the provider, a user name, the user's groups.

    `provider` is "oidc" (GITOPS_OIDC_ISSUER), "github" or "gitlab". Groups are the
    OIDC groups claim, GitLab group paths, or GitHub `org` and `org/team` names.
    """

    provider: str
    user: str
    groups: tuple[str, ...] = ()

    @property
    def display_name(self) -> str:
        return self.user if self.provider == "oidc" else f"{self.provider}:{self.user}"

    def keys(self) -> frozenset[str]:
        """The allowlist entries that name this identity (lower case).

        A plain entry names an OIDC user; `github:` / `gitlab:` entries name users of
        those providers, so `alice` on GitLab is never mistaken for `alice` elsewhere.
        """
        prefix = "" if self.provider == "oidc" else f"{self.provider}:"
        keys = {f"{prefix}{self.user}"} | {f"group:{prefix}{group}" for group in self.groups}
        return frozenset(key.casefold() for key in keys)


@dataclass(frozen=True)
class AccessList:
    """GITOPS_DASHBOARD_VIEWERS / GITOPS_DASHBOARD_OPERATORS, as sets of entries."""

    viewers: frozenset[str]
    operators: frozenset[str]

    @classmethod
    def of(cls, viewers: Iterable[str], operators: Iterable[str]) -> AccessList:
        return cls(_entries(viewers), _entries(operators))

    @property
    def empty(self) -> bool:
        return not self.viewers and not self.operators

    def role_for(self, identity: Identity) -> Role | None:
        """The highest role an entry grants this identity; None: not allowed in."""
        keys = identity.keys()
        if keys & self.operators:
            return Role.OPERATOR
        if keys & self.viewers:
            return Role.VIEWER
        return None


def _entries(values: Iterable[str]) -> frozenset[str]:
    return frozenset(value.strip().casefold() for value in values if value.strip())
