"""A WSGI app served on 127.0.0.1 at a free port, in a daemon thread.

Every fake in the test suite (GitHub, Slack) and the served runner itself use
this, so starting and stopping a server is written once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Self

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class LocalServer:
    """Start with `start(wsgi_app)`, stop with `stop()`; `url` is the root."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self, app: Callable[..., Any]) -> None:
        if self._server is not None:
            return
        self._server = make_server(
            "127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler
        )
        # A short poll interval keeps stop() (and so every test teardown) fast.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=self._name,
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and free the port; safe to call twice."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError(f"{self._name} is not started")
        return f"http://127.0.0.1:{self._server.server_port}"


class ServedFake:
    """Base of the fakes: `start()`/`stop()` or `with`, and `url`, around `wsgi_app()`."""

    def __init__(self, name: str) -> None:
        self._http = LocalServer(name)

    def wsgi_app(self) -> Callable[..., Any]:
        raise NotImplementedError

    def start(self) -> Self:
        """Serve on 127.0.0.1 at a free port in a daemon thread."""
        self._http.start(self.wsgi_app())
        return self

    def stop(self) -> None:
        """Stop serving and free the port; safe to call twice."""
        self._http.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Server root."""
        return self._http.url
