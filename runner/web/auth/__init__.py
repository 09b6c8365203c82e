"""Sign-in for the dashboard and the API: tokens, OIDC/OAuth sessions, roles, CSRF.

`install_auth(app, settings, tokens)` (called by `create_app`) puts one guard in
front of every route; views that act add `@require_role(Role.OPERATOR)`.
Modules: `roles.py` (Role, Principal, the allowlist), `tokens.py` (Bearer tokens),
`oidc.py` (providers through Authlib), `session.py` (cookie, CSRF), `login.py` (the
sign-in routes), `guard.py` (the gate), `startup.py` (refusing to start unprotected).
"""

from runner.web.auth.guard import current_principal, install_auth, require_role
from runner.web.auth.roles import Principal, Role
from runner.web.auth.session import CSRF_FIELD, CSRF_HEADER, csrf_token

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "Principal",
    "Role",
    "csrf_token",
    "current_principal",
    "install_auth",
    "require_role",
]
