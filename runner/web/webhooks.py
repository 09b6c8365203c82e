"""`POST /events`: authenticate a forge webhook, decide whether it is work, queue it.

The answer must come in milliseconds (forges time out after ~10 s and redeliver), so
nothing here calls the forge or git: the handler only checks, records and enqueues.
The checks run in a fixed order, each cheap and each before anything that trusts the
payload: size cap, signature over the raw bytes, JSON, event parsing, allowlist,
delivery id, relevance, then one write: the delivery (dedupe) and its job in one
transaction (`JobQueue.submit(event, delivery=...)`). A redelivered delivery is answered
"duplicate" and queues nothing, before or after a restart. Events that are no work are
answered without writing anything (a redelivery of one is simply ignored again).
Superseding older autoplans happens after the answer, in the queue.

`POST /events` is served by a plain WSGI application in front of Flask
(`serve_webhooks_first`): a delivery needs none of Flask's request context, URL
routing, sign-in guard (the webhook checks its forge's signature itself), session or
hooks, and under a burst of deliveries that machinery cost more CPU than the
handler's own checks (issue 10, profiled). Its answers carry the same security headers
as every other response. It is the only way in: Flask has no route for `POST /events`,
and its sign-in guard does not exempt it. Everything else goes to Flask.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from flask import Flask
from werkzeug.datastructures import Headers
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wrappers import Request

from runner.events.github import parse_github_event, rerun_as_command, suite_rerun_as_command
from runner.events.gitlab import parse_gitlab_event
from runner.events.model import (
    CheckRunRerun,
    CheckSuiteRerun,
    CommentEvent,
    Event,
    IgnoredEvent,
    MalformedEvent,
    PingEvent,
    PullRequestEvent,
    PushEvent,
    RepoRef,
)
from runner.events.signature import verify_github_signature, verify_gitlab_token
from runner.jobs.payloads import ReconcileJob
from runner.observability.log_context import log_context
from runner.reconcile.jobs import job_for_push
from runner.settings import Settings
from runner.store.deliveries import DeliveryRef, DuplicateDelivery
from runner.web.context import EXTENSION_KEY, WEBHOOK_PATH, WebContext

logger = logging.getLogger(__name__)

# Column sizes of the deliveries table; longer values are not from a forge.
_MAX_DELIVERY_ID = 255
_MAX_EVENT_NAME = 64

# What a WSGI application is called with, and what it returns.
Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]

Parser = Callable[[str, dict], Event]

# "202 ACCEPTED": werkzeug's status lines, for the statuses a webhook is answered with.
_STATUS_LINES = {code: f"{code} {reason.upper()}" for code, reason in HTTP_STATUS_CODES.items()}


@dataclass(frozen=True)
class Reply:
    """The HTTP answer plus the outcome label counted in the metrics."""

    status: int
    body: dict[str, Any]
    outcome: str


class _Stop(Exception):
    """Ends the pipeline early with a reply (a rejection, or nothing to do)."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.outcome)
        self.reply = reply


def _error(status: int, outcome: str, message: str) -> _Stop:
    return _Stop(Reply(status, {"error": message}, outcome))


def _ignored(reason: str) -> _Stop:
    return _Stop(Reply(200, {"status": "ignored", "reason": reason}, "ignored"))


@dataclass(frozen=True)
class ForgeHooks:
    """How one forge sends webhooks: its headers, its authenticity check, its parser."""

    name: str
    event_header: str
    # Tried in order; the first one present identifies the delivery (dedupe).
    delivery_headers: tuple[str, ...]
    verify: Callable[[bytes, Headers, str], bool]
    parser: Parser


def _verify_github(body: bytes, headers: Headers, secret: str) -> bool:
    return verify_github_signature(body, headers.get("X-Hub-Signature-256"), secret)


def _verify_gitlab(_body: bytes, headers: Headers, secret: str) -> bool:
    return verify_gitlab_token(headers.get("X-Gitlab-Token"), secret)


def forge_hooks() -> tuple[ForgeHooks, ...]:
    """The forges `/events` understands, in the order their headers are tried."""
    return (
        ForgeHooks(
            name="github",
            event_header="X-GitHub-Event",
            delivery_headers=("X-GitHub-Delivery",),
            verify=_verify_github,
            parser=parse_github_event,
        ),
        ForgeHooks(
            name="gitlab",
            event_header="X-Gitlab-Event",
            # Idempotency-Key (GitLab 17.4+) stays the same when GitLab retries a
            # delivery; the event UUID identifies the event on older versions.
            delivery_headers=("Idempotency-Key", "X-Gitlab-Event-UUID"),
            verify=_verify_gitlab,
            parser=parse_gitlab_event,
        ),
    )


@dataclass(frozen=True)
class WebhookEndpoint:
    """`POST /events` as a plain WSGI application (see the module docstring)."""

    context: WebContext
    forges: tuple[ForgeHooks, ...]
    # Added to every answer: the headers the Flask app puts on all its responses.
    headers: Mapping[str, str]
    # Called after each answer (the delivery pruner's cheap "is a prune due?").
    after: Callable[[], object]

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        try:
            reply = acknowledge(self.context, self.forges, Request(environ), started)
        except Exception:
            # What Flask did for a bug in a view: log it, answer 500.
            logger.exception("webhook handler failed")
            reply = Reply(500, {"error": "internal error"}, "error")
        try:
            self.after()
        except Exception:
            logger.exception("after-webhook task failed")
        # The status line and headers a werkzeug Response writes, without building one
        # (its header machinery cost more than the answer: issue 10, profiled).
        body = _json_body(reply)
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            *self.headers.items(),
        ]
        start_response(_STATUS_LINES[reply.status], headers)
        return [body]


def serve_webhooks_first(
    app: Flask, headers: Mapping[str, str], after: Callable[[], object]
) -> None:
    """Route `POST /events` to a `WebhookEndpoint` before Flask sees it; any other
    request (a GET of the same path too) goes to Flask, its sign-in guard first."""
    endpoint = WebhookEndpoint(app.extensions[EXTENSION_KEY], forge_hooks(), headers, after)
    flask_app: WsgiApp = app.wsgi_app

    def dispatch(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == WEBHOOK_PATH and environ.get("REQUEST_METHOD") == "POST":
            return endpoint(environ, start_response)
        return flask_app(environ, start_response)

    app.wsgi_app = dispatch  # type: ignore[method-assign]


def acknowledge(
    context: WebContext, forges: tuple[ForgeHooks, ...], request: Request, started: float
) -> Reply:
    """Check, record and queue one delivery; the reply to send, counted and logged."""
    forge = _detect_forge(request.headers, forges)
    forge_name = forge.name if forge else "unknown"
    # Every line logged while handling it names the delivery (JSON logs: a field).
    delivery = _for_log(_delivery_id(request, forge), _MAX_DELIVERY_ID) if forge else None
    with log_context(delivery=delivery, forge=forge_name):
        try:
            reply = _handle(context, forge, request)
        except _Stop as stop:
            reply = stop.reply
        context.metrics.observe_webhook(forge_name, reply.outcome, time.perf_counter() - started)
        _log_decision(request, forge, forge_name, delivery or "-", reply)
    return reply


def _json_body(reply: Reply) -> bytes:
    # What jsonify writes (compact, a final newline) without Flask's JSON provider,
    # whose machinery cost more than the dumps on this path.
    return (json.dumps(reply.body, separators=(",", ":")) + "\n").encode()


def _log_decision(
    request: Request, forge: ForgeHooks | None, forge_name: str, delivery: str, reply: Reply
) -> None:
    event = request.headers.get(forge.event_header, "") if forge else ""
    logger.info(
        "webhook forge=%s event=%s delivery=%s -> %d %s %s",
        forge_name,
        _for_log(event, _MAX_EVENT_NAME),
        delivery,
        reply.status,
        reply.outcome,
        reply.body.get("reason") or reply.body.get("error") or "",
    )


def _detect_forge(headers: Headers, forges: tuple[ForgeHooks, ...]) -> ForgeHooks | None:
    return next((forge for forge in forges if forge.event_header in headers), None)


def _for_log(value: str, limit: int) -> str:
    # Headers are attacker-controlled before the signature check: short, one line.
    return value[:limit].encode("unicode_escape").decode("ascii") or "-"


def _handle(context: WebContext, forge: ForgeHooks | None, request: Request) -> Reply:
    settings = context.settings
    body = _read_body(request, settings.max_body_bytes)
    if forge is None:
        raise _error(400, "bad_request", "not a webhook: no X-GitHub-Event or X-Gitlab-Event")
    _authenticate(request, forge, body, settings)
    event_name = _event_name(request, forge)
    payload = _decode_json(request, body)
    event = _parse(forge.parser, event_name, payload)
    if isinstance(event, CheckRunRerun):
        # "Re-run" on our plan check run: the `gitops plan -p` comment of who clicked.
        event = rerun_as_command(event, settings.github_app_id)
    if isinstance(event, CheckSuiteRerun):
        # "Re-run all checks" on our check suite: the `gitops plan` comment of who clicked.
        event = suite_rerun_as_command(event, settings.github_app_id)
    if isinstance(event, PingEvent):
        return Reply(200, {"status": "pong"}, "pong")
    if isinstance(event, IgnoredEvent):
        raise _ignored(event.reason)
    _check_allowlist(event.repo, settings.repo_allowlist)
    delivery = _delivery(request, forge, event_name)
    if isinstance(event, PushEvent):
        return _submit(context, _reconcile_on_push(event, settings), delivery)
    _check_relevance(event, settings)
    return _submit(context, event, delivery)


def _reconcile_on_push(event: PushEvent, settings: Settings) -> ReconcileJob:
    """A push to the default branch of a reconciled repository: its reconcile, now.

    Anything else pushed is acknowledged and ignored (the poll stays the safety net).
    """
    job = job_for_push(event, settings)
    if isinstance(job, str):
        raise _ignored(job)
    return job


def _read_body(request: Request, limit: int) -> bytes:
    """The raw body, refusing more than `limit` bytes whatever Content-Length says."""
    length = request.content_length
    if length is not None and length > limit:
        raise _too_large(limit)
    try:
        body = _read_at_most(request.stream, limit + 1)
    except RequestEntityTooLarge:
        raise _too_large(limit) from None
    # One byte more than allowed tells "exactly at the cap" from "over it" for bodies
    # without Content-Length (chunked).
    if len(body) > limit:
        raise _too_large(limit)
    return body


def _read_at_most(stream: Any, size: int) -> bytes:
    # A single read() may return less than asked (raw streams); a truncated body would
    # then fail its signature check.
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = stream.read(min(remaining, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> _Stop:
    return _error(413, "too_large", f"body larger than {limit} bytes")


def _authenticate(request: Request, forge: ForgeHooks, body: bytes, settings: Settings) -> None:
    secret = _secret_of(forge.name, settings)
    if not secret:
        if settings.insecure_no_webhook_secret:
            return
        # Another forge has a secret (create_app checked one exists); this one has none.
        raise _error(401, "unauthorized", f"no webhook secret configured for {forge.name}")
    if not forge.verify(body, request.headers, secret):
        raise _error(401, "unauthorized", "invalid or missing webhook signature")


def _secret_of(forge: str, settings: Settings) -> str:
    value = settings.github_webhook_secret if forge == "github" else settings.gitlab_webhook_secret
    return value.get_secret_value() if value is not None else ""


def _event_name(request: Request, forge: ForgeHooks) -> str:
    name = request.headers.get(forge.event_header, "")
    if not name or len(name) > _MAX_EVENT_NAME:
        raise _error(400, "bad_request", f"invalid {forge.event_header} header")
    return name


def _decode_json(request: Request, body: bytes) -> Any:
    if request.mimetype == "application/x-www-form-urlencoded":
        raise _error(400, "bad_request", "set the webhook's content type to application/json")
    try:
        return json.loads(body)
    # RecursionError: deeply nested arrays are valid JSON that the parser cannot take.
    except (ValueError, RecursionError):
        raise _error(400, "bad_request", "body is not valid JSON") from None


def _parse(parser: Parser, event_name: str, payload: Any) -> Event:
    try:
        return parser(event_name, payload)
    except MalformedEvent as error:
        raise _error(400, "malformed", f"malformed event: {error}") from None


def repo_allowed(repo: RepoRef, patterns: tuple[str, ...]) -> bool:
    """Whether `repo.key` (`github.com/acme/infra`) matches an allowlist glob.

    An empty allowlist allows every repository whose webhook is correctly signed.
    Case-insensitive: forge hosts and repository names are.
    """
    if not patterns:
        return True
    key = repo.key.casefold()
    return any(fnmatchcase(key, pattern.casefold()) for pattern in patterns)


def _check_allowlist(repo: RepoRef, patterns: tuple[str, ...]) -> None:
    if not repo_allowed(repo, patterns):
        raise _error(403, "forbidden", "repository not allowed")


def _delivery_id(request: Request, forge: ForgeHooks) -> str:
    headers = request.headers
    return next((headers[name] for name in forge.delivery_headers if headers.get(name)), "")


def _delivery(request: Request, forge: ForgeHooks, event_name: str) -> DeliveryRef:
    delivery_id = _delivery_id(request, forge)
    if not delivery_id or len(delivery_id) > _MAX_DELIVERY_ID:
        names = " or ".join(forge.delivery_headers)
        raise _error(400, "bad_request", f"missing or invalid {names} header")
    return DeliveryRef(delivery_id, forge.name, event_name)


def _duplicate() -> _Stop:
    return _Stop(Reply(200, {"status": "duplicate"}, "duplicate"))


def _check_relevance(event: PullRequestEvent | CommentEvent, settings: Settings) -> None:
    """Drop events that are well-formed and allowed but are no work for the runner."""
    if isinstance(event, PullRequestEvent):
        # `closed` still goes through: it releases locks and discards plans, and a
        # merged PR's merge commit is reviewed code in the base repository.
        if event.pr.is_fork and not settings.allow_fork_prs and event.action != "closed":
            raise _ignored("fork")
        if event.pr.is_draft and not settings.plan_drafts and event.action in ("opened", "updated"):
            raise _ignored("draft")
        return
    # A comment payload does not say whether the PR is a fork: the PR flow reads that
    # (and the commenter's permission) from the forge before running anything.
    # The runner's own comments arrive as webhooks too; they must never run commands.
    if event.author_is_bot:
        raise _ignored("comment by a bot")
    # Parsed once, when the payload became a CommentEvent; the job carries the result.
    if event.command is None:
        raise _ignored("comment is not a command")


def _submit(
    context: WebContext,
    event: PullRequestEvent | CommentEvent | ReconcileJob,
    delivery: DeliveryRef,
) -> Reply:
    try:
        # One transaction: the delivery and its job are both stored, or neither is.
        job_id = context.services.submit(event, delivery=delivery)
    except DuplicateDelivery:
        raise _duplicate() from None
    except Exception:
        logger.exception("could not queue a %s event", delivery.forge)
        raise _error(503, "error", "could not queue the event; redeliver it later") from None
    return _queued(job_id)


def _queued(job_id: int) -> Reply:
    return Reply(202, {"status": "queued", "job": job_id}, "queued")
