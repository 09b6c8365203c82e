"""Logging set-up for the CLI and the servers: text or JSON lines, secrets masked.

Text is for people (the default); GITOPS_LOG_FORMAT=json writes one JSON object per
line (python-json-logger) with `time`, `level`, `logger`, `message`, the ids of the
work in hand (`delivery`, `job`, `run`, `pr`, ... from log_context.py) and
`exc_info` for a traceback. Both go through the same `Masker` as comments and run
logs (runner/results/masking.py): a secret passed to a log call is never written.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import IO, Any, Literal

from pythonjsonlogger.json import JsonFormatter

from runner.observability.log_context import current_ids
from runner.results.masking import Masker

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(levelname)s: %(name)s: %(message)s"
SERVER_TEXT_FORMAT = "%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s%(ids)s"
_JSON_FIELDS = "%(levelname)s %(name)s %(message)s"
_RENAMED = {"levelname": "level", "name": "logger"}


class ContextFilter(logging.Filter):
    """Puts the ids of the work in hand on each record (as attributes, and as `ids`,
    a ` key=value ...` suffix for text lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = current_ids()
        for name, value in ids.items():
            setattr(record, name, value)
        record.ids = "".join(f" {name}={value}" for name, value in ids.items())
        return True


class MaskedTextFormatter(logging.Formatter):
    """A plain formatter whose whole output (traceback included) is masked."""

    def __init__(self, fmt: str = TEXT_FORMAT, secrets: Iterable[str] = (), **kwargs: Any):
        super().__init__(fmt, **kwargs)
        self._masker = Masker.from_secrets(secrets)

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "ids"):
            record.ids = ""
        return self._masker.mask(super().format(record))


class MaskedJsonFormatter(JsonFormatter):
    """One JSON object per record, every string in it masked before serialising."""

    def __init__(self, secrets: Iterable[str] = (), **kwargs: Any) -> None:
        kwargs.setdefault("rename_fields", _RENAMED)
        kwargs.setdefault("timestamp", "time")  # ISO 8601, UTC
        super().__init__(_JSON_FIELDS, **kwargs)
        self._masker = Masker.from_secrets(secrets)

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data.pop("ids", None)  # the text suffix; the ids are fields of their own

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {name: self._mask(value) for name, value in log_data.items()}

    def _mask(self, value: Any) -> Any:
        if isinstance(value, str):
            return self._masker.mask(value)
        if isinstance(value, dict):
            return {key: self._mask(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self._mask(item) for item in value]
        return value


def formatter(log_format: LogFormat, secrets: Iterable[str] = (), fmt: str = TEXT_FORMAT):
    """The formatter for a log format (also a `()` factory for gunicorn's dictConfig)."""
    if log_format == "json":
        return MaskedJsonFormatter(secrets)
    return MaskedTextFormatter(fmt, secrets)


def configure_logging(
    log_format: LogFormat = "text",
    *,
    level: int = logging.WARNING,
    secrets: Iterable[str] = (),
    quiet_tracebacks: bool = False,
    fmt: str = TEXT_FORMAT,
) -> logging.Handler:
    """Route the root logger to stderr in `log_format`; returns the handler.

    `quiet_tracebacks` drops records that carry an exception (the CLI without
    `--debug`: the command's own error line already says what failed).
    """
    handler = build_handler(log_format, secrets, fmt=fmt)
    if quiet_tracebacks:
        handler.addFilter(lambda record: record.exc_info is None)
    logging.basicConfig(level=level, handlers=[handler], force=True)
    return handler


def build_handler(
    log_format: LogFormat,
    secrets: Iterable[str] = (),
    stream: IO[str] | None = None,
    fmt: str = SERVER_TEXT_FORMAT,
) -> logging.Handler:
    """A stream handler (stderr by default) writing `log_format` with the work's ids."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter(log_format, secrets, fmt))
    handler.addFilter(ContextFilter())
    return handler


def gunicorn_logconfig(log_format: LogFormat, secrets: Iterable[str]) -> dict[str, Any]:
    """gunicorn's `logconfig_dict`: its own logs and the runner's in one format.

    Application loggers (`runner.*`) go to stderr next to gunicorn's error log; the
    access log (off unless asked for) to stdout.
    """
    factory = {"()": formatter, "log_format": log_format, "secrets": list(secrets),
               "fmt": SERVER_TEXT_FORMAT}  # fmt: skip
    context = {"()": ContextFilter}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"runner": factory},
        "filters": {"ids": context},
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "runner",
                "filters": ["ids"],
                "stream": "ext://sys.stdout",
            },
            "error_console": {
                "class": "logging.StreamHandler",
                "formatter": "runner",
                "filters": ["ids"],
                "stream": "ext://sys.stderr",
            },
        },
        "root": {"level": "INFO", "handlers": ["error_console"]},
        "loggers": {
            "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
        },
    }
