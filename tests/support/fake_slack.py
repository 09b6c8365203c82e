"""A fake Slack on 127.0.0.1: incoming webhooks and the Web API's chat.postMessage.

The runner talks to Slack through slack-sdk; serving the real wire protocol here
tests that code path (JSON bodies, auth header, status codes) without mocking it.
Faults are queued per request (`fail_next`) or switched on for everything (`down`).

    with FakeSlack(token="xoxb-test") as slack:
        notifier = SlackWebhookNotifier(slack.webhook_url)
        ...
        assert "Drift" in slack.messages()[-1].text
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from werkzeug.wrappers import Request, Response

from tests.support.local_server import ServedFake

WEBHOOK_PATH = "/services/T000/B000/XXXX"


@dataclass(frozen=True)
class SlackMessage:
    """One message Slack accepted."""

    via: str  # "webhook" or "api"
    channel: str | None
    text: str
    blocks: tuple[dict[str, Any], ...] = field(default=())

    @property
    def block_text(self) -> str:
        """All text inside the blocks, for assertions on what people read."""
        return json.dumps(self.blocks)


class FakeSlack(ServedFake):
    """Records accepted messages; answers faults when told to."""

    def __init__(self, token: str = "xoxb-test-token") -> None:
        super().__init__("fake-slack")
        self.token = token
        self._lock = threading.Lock()
        self._messages: list[SlackMessage] = []
        self._faults: list[int] = []
        self._down_status: int | None = None
        self.requests = 0

    # --- lifecycle --------------------------------------------------------------

    def wsgi_app(self) -> Any:
        return self._wsgi

    @property
    def webhook_url(self) -> str:
        return self.url + WEBHOOK_PATH

    @property
    def api_url(self) -> str:
        return self.url + "/api/"

    # --- control and inspection -------------------------------------------------

    def fail_next(self, count: int = 1, status: int = 500) -> None:
        """The next `count` requests fail with `status`."""
        with self._lock:
            self._faults.extend([status] * count)

    def down(self, status: int | None = 503) -> None:
        """Every request fails with `status` until `down(None)`."""
        with self._lock:
            self._down_status = status

    def messages(self) -> list[SlackMessage]:
        with self._lock:
            return list(self._messages)

    # --- HTTP -------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        response = self._handle(request)
        return response(environ, start_response)

    def _handle(self, request: Request) -> Response:
        with self._lock:
            self.requests += 1
            fault = self._faults.pop(0) if self._faults else self._down_status
        if fault is not None:
            return _json({"ok": False, "error": "fatal_error"}, fault)
        if request.method == "POST" and request.path == WEBHOOK_PATH:
            return self._webhook(request)
        if request.method == "POST" and request.path == "/api/chat.postMessage":
            return self._post_message(request)
        return _json({"ok": False, "error": "unknown_method"}, 404)

    def _webhook(self, request: Request) -> Response:
        payload = request.get_json(force=True, silent=True) or {}
        if not payload.get("text") and not payload.get("blocks"):
            return Response("no_text", status=400)
        self._record("webhook", None, payload)
        return Response("ok", status=200, content_type="text/html")

    def _post_message(self, request: Request) -> Response:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _json({"ok": False, "error": "invalid_auth"}, 200)
        payload = _payload(request)
        channel = payload.get("channel")
        if not channel:
            return _json({"ok": False, "error": "channel_not_found"}, 200)
        self._record("api", channel, payload)
        return _json({"ok": True, "channel": channel, "ts": f"{len(self._messages)}.000"}, 200)

    def _record(self, via: str, channel: str | None, payload: dict[str, Any]) -> None:
        blocks = payload.get("blocks") or ()
        if isinstance(blocks, str):
            blocks = json.loads(blocks)
        with self._lock:
            self._messages.append(
                SlackMessage(via, channel, str(payload.get("text") or ""), tuple(blocks))
            )


def _payload(request: Request) -> dict[str, Any]:
    if request.is_json:
        return dict(request.get_json(force=True))
    return dict(request.form)


def _json(body: dict[str, Any], status: int) -> Response:
    return Response(json.dumps(body), status=status, content_type="application/json")
