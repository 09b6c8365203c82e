"""Acting as a GitHub App: one installation token per installation, refreshed in time.

An organisation installs the App on chosen repositories; each installation has its own
short-lived token (an hour), exchanged for a JWT signed with the App's private key.
PyGithub's `AppInstallationAuth` does the exchange and renews the token shortly before
it expires, so a client built here never sends an expired token. Which installation a
repository belongs to comes with each webhook (`RepoRef.installation_id`); repositories
reached without one (drift scans, pull mode) are looked up once and remembered.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from github import Auth, Github, GithubException, GithubIntegration

from runner.events.model import RepoRef
from runner.forge.base import ForgeError

ClientFactory = Callable[[Auth.Auth], Github]


class GitHubAppAuth:
    """The App's identity and a PyGithub client per installation; thread-safe."""

    def __init__(self, app_id: int, private_key: str, new_client: ClientFactory) -> None:
        """`new_client(auth)`: a `Github` with the runner's options (timeouts, retries)."""
        self.app_id = app_id
        self._app_auth = Auth.AppAuth(app_id, private_key)
        self._new_client = new_client
        self._app_client = new_client(self._app_auth)  # JWT: the App itself
        self._installations: dict[int, tuple[Github, Auth.AppInstallationAuth]] = {}
        self._by_repo: dict[str, int] = {}
        self._slug: str | None = None
        self._lock = threading.Lock()

    def client(self, repo: RepoRef) -> Github:
        """The client acting as the installation that covers `repo`."""
        return self._installation(self.installation_id(repo))[0]

    def token(self, repo: RepoRef) -> str:
        """A current installation token for `repo` (for git over HTTPS); renewed if due."""
        return self._installation(self.installation_id(repo))[1].token

    def installation_id(self, repo: RepoRef) -> int:
        """The webhook's installation, else the one GitHub names for the repository."""
        key = repo.full_name.casefold()
        with self._lock:
            if repo.installation_id is not None:
                self._by_repo[key] = repo.installation_id
            known = self._by_repo.get(key)
        if known is not None:
            return known
        owner, _, name = repo.full_name.partition("/")
        found = self._integration().get_repo_installation(owner, name).id
        with self._lock:
            self._by_repo[key] = found
        return found

    def bot_login(self) -> str:
        """`<slug>[bot]`: the login the App's comments, statuses and issues carry."""
        with self._lock:
            if self._slug is None:
                self._slug = self._integration().get_app().slug
            return f"{self._slug}[bot]"

    def _installation(self, installation_id: int) -> tuple[Github, Auth.AppInstallationAuth]:
        with self._lock:
            found = self._installations.get(installation_id)
            if found is None:
                auth = self._app_auth.get_installation_auth(installation_id)
                client = self._new_client(auth)  # binds `auth` to the client's requester
                self._exchange(auth)
                found = self._installations[installation_id] = (client, auth)
            return found

    def _exchange(self, auth: Auth.AppInstallationAuth) -> None:
        """Get the first token now, so a wrong App id or key is named as such."""
        try:
            auth.token  # noqa: B018 -- the property exchanges the JWT for a token
        except GithubException as exc:
            if exc.status not in (401, 403, 404):
                raise
            message = exc.data.get("message") if isinstance(exc.data, dict) else exc.data
            raise ForgeError(
                f"GitHub App {self.app_id} could not act as installation "
                f"{auth.installation_id}: HTTP {exc.status}: {message}; check "
                "GITOPS_GITHUB_APP_ID, the App's private key, and that the App is installed",
                status=exc.status,
            ) from exc

    def _integration(self) -> GithubIntegration:
        return GithubIntegration(**self._app_client.requester.kwargs)
