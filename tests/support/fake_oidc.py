"""A fake OpenID Connect provider served over real HTTP on 127.0.0.1.

It speaks the parts of the protocol the runner (through Authlib) uses: discovery,
JWKS, the authorization endpoint, the token endpoint (authorization code + PKCE
S256, client_secret_basic or _post) and userinfo. There is no login form: the
authorization endpoint signs in whoever the test configured with `sign_in_as`, and
redirects straight back, so a Flask test client or a headless browser can follow it.

Attacks are switched on per sign-in with `forge_next(...)`: an id_token signed with
another key (same `kid`), for another audience, with another nonce or issuer.

Usage::

    with FakeOIDC(client_id="runner", client_secret="s3cret") as idp:
        idp.sign_in_as("alice@example.com", groups=["platform"])
        settings = Settings(**idp.settings(public_url="http://localhost"), ...)
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from flask import Flask, Response, jsonify, redirect, request
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.support.local_server import ServedFake

KEY_ID = "fake-oidc-key"


@dataclass(frozen=True)
class FakeUser:
    """Who the next authorization signs in, and what the provider says about them."""

    email: str
    groups: tuple[str, ...] = ()
    email_verified: bool = True
    username: str | None = None  # preferred_username / nickname; default: the email's local part
    groups_in_id_token: bool = True  # False: groups only from userinfo (GitLab-style)

    @property
    def sub(self) -> str:
        return "sub-" + hashlib.sha256(self.email.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Forgery:
    """How the next id_token lies (all off: an honest token)."""

    foreign_key: bool = False
    audience: str | None = None
    nonce: str | None = None
    issuer: str | None = None
    userinfo_sub: str | None = None


@dataclass
class _Grant:
    user: FakeUser
    client_id: str
    redirect_uri: str
    nonce: str | None
    code_challenge: str | None
    forgery: Forgery


@dataclass
class AuthorizeRequest:
    """What the runner sent to the authorization endpoint (tests assert on it)."""

    params: dict[str, str]


@dataclass
class _State:
    user: FakeUser | None = None
    forgery: Forgery = field(default_factory=Forgery)
    grants: dict[str, _Grant] = field(default_factory=dict)
    access_tokens: dict[str, tuple[FakeUser, Forgery]] = field(default_factory=dict)
    authorize_requests: list[AuthorizeRequest] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)


class FakeOIDC(ServedFake):
    """An OIDC provider with one registered client and one configured user at a time."""

    def __init__(
        self, client_id: str = "gitops-runner", client_secret: str = "oidc-secret"
    ) -> None:
        super().__init__("fake-oidc")
        self.client_id = client_id
        self.client_secret = client_secret
        self._key = RSAKey.generate_key(2048, parameters={"kid": KEY_ID}, private=True)
        self._foreign_key = RSAKey.generate_key(2048, parameters={"kid": KEY_ID}, private=True)
        self._lock = threading.Lock()
        self._state = _State()

    # ---- what tests call -----------------------------------------------------------

    def sign_in_as(
        self, email: str, groups: list[str] | tuple[str, ...] = (), **extra: Any
    ) -> None:
        """The person the next authorization signs in (no form, no password)."""
        with self._lock:
            self._state.user = FakeUser(email, tuple(groups), **extra)

    def forge_next(self, **lies: Any) -> None:
        """Make the next issued id_token lie (see `Forgery`); reset after one use."""
        with self._lock:
            self._state.forgery = Forgery(**lies)

    @property
    def issuer(self) -> str:
        return self.url

    def settings(self, public_url: str) -> dict[str, Any]:
        """The runner settings that point at this provider."""
        return {
            "oidc_issuer": self.issuer,
            "oidc_client_id": self.client_id,
            "oidc_client_secret": self.client_secret,
            "session_secret": "session-secret-for-tests-0123456789",
            "public_url": public_url,
        }

    @property
    def authorize_requests(self) -> list[AuthorizeRequest]:
        with self._lock:
            return list(self._state.authorize_requests)

    @property
    def token_requests(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self._state.token_requests)

    # ---- the provider ---------------------------------------------------------------

    def wsgi_app(self) -> Callable[..., Any]:
        app = Flask("fake_oidc")
        app.add_url_rule("/.well-known/openid-configuration", view_func=self._discovery)
        app.add_url_rule("/jwks", view_func=self._jwks)
        app.add_url_rule("/authorize", view_func=self._authorize)
        app.add_url_rule("/token", view_func=self._token, methods=["POST"])
        app.add_url_rule("/userinfo", view_func=self._userinfo)
        return app

    def _discovery(self) -> Response:
        root = request.host_url.rstrip("/")
        return jsonify(
            {
                "issuer": root,
                "authorization_endpoint": f"{root}/authorize",
                "token_endpoint": f"{root}/token",
                "userinfo_endpoint": f"{root}/userinfo",
                "jwks_uri": f"{root}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_basic",
                    "client_secret_post",
                ],
            }
        )

    def _jwks(self) -> Response:
        return jsonify({"keys": [self._key.as_dict(private=False)]})

    def _authorize(self) -> Response:
        params = request.args.to_dict()
        with self._lock:
            self._state.authorize_requests.append(AuthorizeRequest(params))
            user, forgery = self._state.user, self._state.forgery
            self._state.forgery = Forgery()
            if params.get("client_id") != self.client_id or user is None:
                return jsonify({"error": "unauthorized_client"}), 400  # type: ignore[return-value]
            code = secrets.token_urlsafe(16)
            self._state.grants[code] = _Grant(
                user=user,
                client_id=self.client_id,
                redirect_uri=params.get("redirect_uri", ""),
                nonce=params.get("nonce"),
                code_challenge=params.get("code_challenge"),
                forgery=forgery,
            )
        query = urlencode({"code": code, "state": params.get("state", "")})
        return redirect(f"{params.get('redirect_uri', '')}?{query}")

    def _token(self) -> Response | tuple[Response, int]:
        form = request.form.to_dict()
        with self._lock:
            self._state.token_requests.append(form)
            grant = self._state.grants.pop(form.get("code", ""), None)
        if not self._client_authenticated(form):
            return jsonify({"error": "invalid_client"}), 401
        if grant is None or grant.redirect_uri != form.get("redirect_uri"):
            return jsonify({"error": "invalid_grant"}), 400
        if grant.code_challenge and _s256(form.get("code_verifier", "")) != grant.code_challenge:
            return jsonify({"error": "invalid_grant", "error_description": "PKCE"}), 400
        access_token = secrets.token_urlsafe(24)
        with self._lock:
            self._state.access_tokens[access_token] = (grant.user, grant.forgery)
        return jsonify(
            {
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": 3600,
                "id_token": self._id_token(grant),
            }
        )

    def _userinfo(self) -> Response | tuple[Response, int]:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        with self._lock:
            found = self._state.access_tokens.get(token)
        if found is None:
            return jsonify({"error": "invalid_token"}), 401
        user, forgery = found
        claims = {**self._user_claims(user), "groups": list(user.groups)}
        if forgery.userinfo_sub is not None:
            claims["sub"] = forgery.userinfo_sub
        return jsonify(claims)

    def _client_authenticated(self, form: dict[str, str]) -> bool:
        basic = request.authorization
        if basic is not None:
            return basic.username == self.client_id and basic.password == self.client_secret
        return (
            form.get("client_id") == self.client_id
            and form.get("client_secret") == self.client_secret
        )

    def _user_claims(self, user: FakeUser) -> dict[str, Any]:
        username = user.username or user.email.split("@", 1)[0]
        return {
            "sub": user.sub,
            "email": user.email,
            "email_verified": user.email_verified,
            "preferred_username": username,
            "nickname": username,
        }

    def _id_token(self, grant: _Grant) -> str:
        forgery, now = grant.forgery, int(time.time())
        claims: dict[str, Any] = {
            **self._user_claims(grant.user),
            "iss": forgery.issuer or request.host_url.rstrip("/"),
            "aud": forgery.audience or grant.client_id,
            "iat": now,
            "exp": now + 300,
        }
        nonce = forgery.nonce if forgery.nonce is not None else grant.nonce
        if nonce is not None:
            claims["nonce"] = nonce
        if grant.user.groups_in_id_token:
            claims["groups"] = list(grant.user.groups)
        key = self._foreign_key if forgery.foreign_key else self._key
        return jwt.encode({"alg": "RS256", "kid": KEY_ID}, claims, key)


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
