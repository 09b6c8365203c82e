"""Pick the `Forge` implementation for an event's forge, configured from the settings.

The only place that knows which settings belong to which forge, so a missing token
fails here with a message naming the variable to set, not deep inside a request.
"""

from __future__ import annotations

from runner.events.model import ForgeKind
from runner.forge.base import Forge, ForgeNotConfigured
from runner.forge.github import GitHubForge
from runner.forge.gitlab import GitLabForge
from runner.settings import Settings, SettingsError


def build_forge(settings: Settings, forge_name: ForgeKind) -> Forge:
    """The forge client for `forge_name`; raises `ForgeNotConfigured` if it cannot be built."""
    if forge_name == "github":
        return _github(settings)
    if forge_name == "gitlab":
        return _gitlab(settings)
    raise ForgeNotConfigured(f"unknown forge {forge_name!r}; expected 'github' or 'gitlab'")


def _github(settings: Settings) -> GitHubForge:
    """An App when `GITOPS_GITHUB_APP_ID` is set (it wins over a token), else the token."""
    wait = settings.github_rate_limit_max_wait
    if settings.github_app_id is not None:
        key = _app_private_key(settings)
        checks = settings.github_checks != "off"
        app = (settings.github_app_id, key)
        return GitHubForge(
            settings.github_api_url, app=app, checks=checks, max_rate_limit_wait=wait
        )
    token = settings.github_token.get_secret_value() if settings.github_token else ""
    if not token:
        raise ForgeNotConfigured(
            "forge 'github' is not configured: set GITOPS_GITHUB_TOKEN "
            "(or GITOPS_GITHUB_APP_ID and GITOPS_GITHUB_APP_KEY_FILE)"
        )
    if settings.github_checks == "on":
        raise ForgeNotConfigured(
            "GITOPS_GITHUB_CHECKS=on needs a GitHub App (GITOPS_GITHUB_APP_ID): GitHub lets "
            "only Apps write check runs; use auto or off with GITOPS_GITHUB_TOKEN"
        )
    return GitHubForge(settings.github_api_url, token, max_rate_limit_wait=wait)


def _app_private_key(settings: Settings) -> str:
    """The App's key, checked to be a PEM private key before any request is signed."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        key = settings.github_app_private_key()
    except SettingsError as error:
        raise ForgeNotConfigured(str(error)) from None
    try:
        load_pem_private_key(key.encode(), password=None)
    except (ValueError, TypeError):
        where = "GITOPS_GITHUB_APP_KEY" if settings.github_app_key else "GITOPS_GITHUB_APP_KEY_FILE"
        raise ForgeNotConfigured(
            f"{where}: not an unencrypted PEM private key (the .pem file GitHub gives "
            "when you generate a private key for the App)"
        ) from None
    return key


def _gitlab(settings: Settings) -> Forge:
    token = settings.gitlab_token.get_secret_value() if settings.gitlab_token else ""
    if not token:
        raise ForgeNotConfigured("forge 'gitlab' is not configured: set GITOPS_GITLAB_TOKEN")
    return GitLabForge(settings.gitlab_url, token)
