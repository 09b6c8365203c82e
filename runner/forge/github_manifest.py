"""The GitHub App manifest: exactly the permissions and events the runner uses.

GitHub creates an App from a manifest (Settings → Developer settings → GitHub Apps, or
`POST /settings/apps/new` with `manifest=`); `gitops-runner github-app manifest`
prints this one. Each permission is the least the runner's calls need (docs/forges.md):
reading collaborator permissions only needs `metadata`, so `members` is not asked for.
"""

from __future__ import annotations

from typing import Any

# Repository permissions, each with what needs it.
PERMISSIONS: dict[str, str] = {
    "metadata": "read",  # always granted; collaborator permission lookups
    "contents": "read",  # cloning, compare
    "pull_requests": "write",  # reading PRs and reviews, PR comments
    "issues": "write",  # drift issues and their comments
    "statuses": "write",  # gitops/* statuses; others' statuses for `mergeable`
    "checks": "write",  # check runs: others' for `mergeable`, the runner's own
}
# Webhook events: PRs (autoplan, merge), comments (commands), check runs (re-run) and
# check suites (re-run all).
EVENTS: tuple[str, ...] = ("pull_request", "issue_comment", "check_run", "check_suite")


def app_manifest(name: str, public_url: str, *, public: bool = False) -> dict[str, Any]:
    """The manifest for an App named `name` whose runner is reached at `public_url`."""
    base = public_url.rstrip("/")
    return {
        "name": name,
        "url": base or "https://github.com/",
        "hook_attributes": {"url": f"{base}/events", "active": True},
        "public": public,
        "default_permissions": dict(PERMISSIONS),
        "default_events": list(EVENTS),
    }
