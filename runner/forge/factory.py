"""Pick the `Forge` implementation for an event's forge, configured from the settings.

The only place that knows which settings belong to which forge, so a missing token
fails here with a message naming the variable to set, not deep inside a request.
"""

from __future__ import annotations

from runner.events.model import ForgeKind
from runner.forge.base import Forge
from runner.forge.github import GitHubForge
from runner.forge.gitlab import GitLabForge
from runner.settings import Settings


class ForgeNotConfigured(ValueError):
    """The runner got work for a forge it has no credentials (or no support) for."""


def build_forge(settings: Settings, forge_name: ForgeKind) -> Forge:
    """The forge client for `forge_name`; raises `ForgeNotConfigured` if it cannot be built."""
    if forge_name == "github":
        return _github(settings)
    if forge_name == "gitlab":
        return _gitlab(settings)
    raise ForgeNotConfigured(f"unknown forge {forge_name!r}; expected 'github' or 'gitlab'")


def _github(settings: Settings) -> Forge:
    token = settings.github_token.get_secret_value() if settings.github_token else ""
    if not token:
        raise ForgeNotConfigured("forge 'github' is not configured: set GITOPS_GITHUB_TOKEN")
    return GitHubForge(settings.github_api_url, token)


def _gitlab(settings: Settings) -> Forge:
    token = settings.gitlab_token.get_secret_value() if settings.gitlab_token else ""
    if not token:
        raise ForgeNotConfigured("forge 'gitlab' is not configured: set GITOPS_GITLAB_TOKEN")
    return GitLabForge(settings.gitlab_url, token)
