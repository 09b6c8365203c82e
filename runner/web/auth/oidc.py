"""Sign-in providers for people, through Authlib: any OpenID Connect provider,
GitLab (an OIDC provider at GITOPS_GITLAB_URL), and GitHub (OAuth2; GitHub has no
OIDC for users, so the user, orgs and teams come from its REST API).

Authlib checks what must be checked: `state` (kept in the signed session), PKCE
(S256), and for OIDC the id_token's signature against the provider's JWKS, its
issuer, audience, expiry and nonce. What this module adds is turning a provider's
answer into an `Identity` and refusing answers that do not name a user.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from authlib.integrations.flask_client import OAuth

from runner.settings import Settings
from runner.web.auth.roles import Identity

# Teams and orgs beyond the first page are not read: an allowlist names a handful.
_GITHUB_PAGE = {"per_page": "100"}


class SignInError(Exception):
    """The provider's answer does not identify a usable user (the message says why)."""


@dataclass(frozen=True)
class Provider:
    """One configured way to sign in: its route name, its label, its Authlib client."""

    name: str
    label: str
    client: Any
    identify: Callable[[Any, dict[str, Any]], Identity]

    def identity(self, token: dict[str, Any]) -> Identity:
        return self.identify(self.client, token)


@dataclass(frozen=True)
class SignInProviders:
    """The providers configured for one app, by name."""

    by_name: dict[str, Provider]

    @classmethod
    def from_settings(cls, app: Any, settings: Settings) -> SignInProviders:
        oauth = OAuth(app)
        providers = [
            provider
            for build in (_oidc, _gitlab, _github)
            if (provider := build(oauth, settings)) is not None
        ]
        return cls({provider.name: provider for provider in providers})

    def get(self, name: str) -> Provider | None:
        return self.by_name.get(name)

    def __iter__(self) -> Any:
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)


def configured_provider_names(settings: Settings) -> list[str]:
    """Which providers the settings configure (the client id is what says so)."""
    names = []
    if settings.oidc_issuer or settings.oidc_client_id:
        names.append("oidc")
    if settings.gitlab_oauth_client_id:
        names.append("gitlab")
    if settings.github_oauth_client_id:
        names.append("github")
    return names


def _secret(value: Any) -> str:
    return value.get_secret_value() if value is not None else ""


def _oidc(oauth: OAuth, settings: Settings) -> Provider | None:
    if not (settings.oidc_issuer and settings.oidc_client_id):
        return None
    client = oauth.register(
        name="oidc",
        client_id=settings.oidc_client_id,
        client_secret=_secret(settings.oidc_client_secret),
        server_metadata_url=_discovery_url(settings.oidc_issuer),
        client_kwargs={"scope": settings.oidc_scopes, "code_challenge_method": "S256"},
    )
    username, groups = settings.oidc_username_claim, settings.oidc_groups_claim

    def identify(client: Any, token: dict[str, Any]) -> Identity:
        return _oidc_identity("oidc", client, token, username, groups)

    return Provider("oidc", _host_label(settings.oidc_issuer), client, identify)


def _gitlab(oauth: OAuth, settings: Settings) -> Provider | None:
    if not settings.gitlab_oauth_client_id:
        return None
    client = oauth.register(
        name="gitlab",
        client_id=settings.gitlab_oauth_client_id,
        client_secret=_secret(settings.gitlab_oauth_client_secret),
        server_metadata_url=_discovery_url(settings.gitlab_url),
        client_kwargs={"scope": "openid profile email", "code_challenge_method": "S256"},
    )

    def identify(client: Any, token: dict[str, Any]) -> Identity:
        # GitLab's user name is `nickname`; group paths come from its userinfo.
        return _oidc_identity("gitlab", client, token, "nickname", "groups")

    return Provider("gitlab", "GitLab", client, identify)


def _github(oauth: OAuth, settings: Settings) -> Provider | None:
    if not settings.github_oauth_client_id:
        return None
    web = github_web_url(settings.github_api_url)
    client = oauth.register(
        name="github",
        client_id=settings.github_oauth_client_id,
        client_secret=_secret(settings.github_oauth_client_secret),
        authorize_url=f"{web}/login/oauth/authorize",
        access_token_url=f"{web}/login/oauth/access_token",
        api_base_url=settings.github_api_url.rstrip("/") + "/",
        # read:org lists the orgs and teams `group:github:...` entries name.
        client_kwargs={"scope": "read:user read:org", "code_challenge_method": "S256"},
    )
    return Provider("github", "GitHub", client, _github_identity)


def github_web_url(api_url: str) -> str:
    """Where GitHub's sign-in pages live: github.com for api.github.com, the host's
    root for GitHub Enterprise (`https://ghe.example/api/v3`)."""
    parts = urlsplit(api_url)
    host = parts.netloc
    if host.lower() == "api.github.com":
        host = "github.com"
    return f"{parts.scheme}://{host}"


def _discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + "/.well-known/openid-configuration"


def _host_label(url: str) -> str:
    return urlsplit(url).netloc or "single sign-on"


def _oidc_identity(
    provider: str, client: Any, token: dict[str, Any], username_claim: str, groups_claim: str
) -> Identity:
    claims = token.get("userinfo")
    if not claims:
        # No id_token, or no nonce in the state: never trust a bare access token here.
        raise SignInError("the provider sent no verifiable id_token")
    if username_claim == "email" and claims.get("email_verified") is False:
        raise SignInError("the provider says this email address is not verified")
    user = claims.get(username_claim)
    if not isinstance(user, str) or not user.strip():
        raise SignInError(f"the id_token has no {username_claim!r} claim to name the user")
    groups = claims.get(groups_claim)
    if groups is None:
        groups = _userinfo_groups(client, token, claims["sub"], groups_claim)
    return Identity(provider, user.strip(), _strings(groups))


def _userinfo_groups(client: Any, token: dict[str, Any], sub: str, claim: str) -> Any:
    """Groups from the userinfo endpoint (GitLab, and IdPs that keep id_tokens small).

    Only when the userinfo answers for the same subject as the verified id_token.
    """
    metadata = client.load_server_metadata()
    if "userinfo_endpoint" not in metadata:
        return ()
    info = client.userinfo(token=token)
    if info.get("sub") != sub:
        raise SignInError("the userinfo endpoint answered for another user")
    return info.get(claim, ())


def _github_identity(client: Any, token: dict[str, Any]) -> Identity:
    user = _github_json(client, "user", token)
    login = user.get("login") if isinstance(user, dict) else None
    if not isinstance(login, str) or not login:
        raise SignInError("GitHub did not say who signed in")
    orgs = _github_json(client, "user/orgs", token)
    teams = _github_json(client, "user/teams", token)
    groups = [org.get("login") for org in orgs if isinstance(org, dict)]
    groups += [
        f"{team['organization'].get('login')}/{team.get('slug')}"
        for team in teams
        if isinstance(team, dict) and isinstance(team.get("organization"), dict)
    ]
    return Identity("github", login, _strings(groups))


def _github_json(client: Any, path: str, token: dict[str, Any]) -> Any:
    params = None if path == "user" else _GITHUB_PAGE
    response = client.get(path, token=token, params=params)
    response.raise_for_status()
    return response.json()


def _strings(values: Any) -> tuple[str, ...]:
    if isinstance(values, str):
        values = [values]
    if not isinstance(values, list | tuple):
        return ()
    return tuple(value for value in values if isinstance(value, str) and value)
