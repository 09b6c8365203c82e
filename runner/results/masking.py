"""Hide secret values in anything the runner shows: plan output, errors, comments, logs.

Terraform already prints `(sensitive value)` for sensitive values in its own plan
rendering, but secrets still leak through other paths: provider errors that quote
the value they reject, local-exec output, `-var` echoes, a git remote URL with a
token. So every text leaving the runner goes through a `Masker`, built from:

- the sensitive values of a JSON plan: variables declared `sensitive`, sensitive
  outputs, and resource attributes marked in `before_sensitive` / `after_sensitive`
  / `sensitive_values`;
- the values of environment variables the server treats as secrets;
- always: the password part of `scheme://user:password@host` URLs.

Values shorter than `MIN_SECRET_LENGTH` characters are not masked: replacing every
"1" or "on" in an output would make it unreadable, and a secret that short is not
protected by hiding it anyway. Booleans are never secrets for the same reason.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

REDACTED = "(sensitive value)"
MIN_SECRET_LENGTH = 4

# `https://user:TOKEN@host` -> `https://user:***@host`; the user name stays readable.
_URL_CREDENTIALS = re.compile(r"\b([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*):[^\s/@]+@")
_URL_REPLACEMENT = r"\1:***@"


class Masker:
    """Replaces known secret strings with `(sensitive value)`; immutable and thread-safe."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets = frozenset(_variants(secrets))
        # Longest first, so a secret that contains another is replaced as a whole.
        ordered = sorted(self._secrets, key=lambda s: (-len(s), s))
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    @classmethod
    def from_secrets(cls, values: Iterable[str]) -> Masker:
        """From secret values already at hand (e.g. the server's secret env var values)."""
        return cls(values)

    @classmethod
    def from_env(cls, names: Iterable[str], environ: Mapping[str, str] | None = None) -> Masker:
        """From the values of the named environment variables; unset names are skipped."""
        env = os.environ if environ is None else environ
        return cls(env[name] for name in names if env.get(name))

    @classmethod
    def from_plan(cls, plan_json: Mapping[str, Any], secret_values: Iterable[str] = ()) -> Masker:
        """From the sensitive values of a `show -json` plan, plus extra secret values."""
        return cls([*sensitive_plan_values(plan_json), *secret_values])

    def with_secrets(self, values: Iterable[str]) -> Masker:
        """A masker that hides these values too (e.g. a plan's on top of the server's)."""
        return Masker([*self._secrets, *values])

    def mask(self, text: str) -> str:
        """`text` with every known secret and every URL password replaced."""
        if not text:
            return text
        if self._pattern is not None:
            text = self._pattern.sub(REDACTED, text)
        # Credentials need `://` and `@`: most output has neither, and the scan is not free.
        if "://" not in text or "@" not in text:
            return text
        return _URL_CREDENTIALS.sub(_URL_REPLACEMENT, text)

    def __repr__(self) -> str:
        # Never the values: a repr ends up in logs and tracebacks.
        return f"Masker({len(self._secrets)} secrets)"


def sensitive_plan_values(plan_json: Mapping[str, Any]) -> Iterator[str]:
    """Every value a JSON plan marks as sensitive, as strings (duplicates possible)."""
    yield from _sensitive_variables(plan_json)
    yield from _sensitive_outputs(plan_json)
    for entry in [*_list(plan_json, "resource_changes"), *_list(plan_json, "resource_drift")]:
        change = entry.get("change") or {}
        yield from _sensitive_leaves(change.get("before"), change.get("before_sensitive"))
        yield from _sensitive_leaves(change.get("after"), change.get("after_sensitive"))
    for module in _modules(plan_json):
        for resource in module.get("resources") or ():
            yield from _sensitive_leaves(resource.get("values"), resource.get("sensitive_values"))


def _sensitive_variables(plan_json: Mapping[str, Any]) -> Iterator[str]:
    declared = (plan_json.get("configuration") or {}).get("root_module", {}).get("variables", {})
    values = plan_json.get("variables") or {}
    for name, declaration in declared.items():
        if declaration.get("sensitive") and name in values:
            yield from _leaves(values[name].get("value"))


def _sensitive_outputs(plan_json: Mapping[str, Any]) -> Iterator[str]:
    prior = (plan_json.get("prior_state") or {}).get("values") or {}
    for outputs in ((plan_json.get("planned_values") or {}).get("outputs"), prior.get("outputs")):
        for output in (outputs or {}).values():
            if output.get("sensitive"):
                yield from _leaves(output.get("value"))
    for change in (plan_json.get("output_changes") or {}).values():
        yield from _sensitive_leaves(change.get("before"), change.get("before_sensitive"))
        yield from _sensitive_leaves(change.get("after"), change.get("after_sensitive"))


def _modules(plan_json: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Root and child modules of the planned values and of the prior state."""
    roots = [
        (plan_json.get("planned_values") or {}).get("root_module"),
        ((plan_json.get("prior_state") or {}).get("values") or {}).get("root_module"),
    ]
    pending = [module for module in roots if module]
    while pending:
        module = pending.pop()
        yield module
        pending.extend(module.get("child_modules") or ())


def _sensitive_leaves(value: Any, mask: Any) -> Iterator[str]:
    """Leaves of `value` under the `true`s of a Terraform sensitivity mask.

    The mask mirrors the value's shape: `true` marks a whole subtree sensitive,
    objects and arrays descend, anything else (false, absent) is not sensitive.
    """
    if mask is True:
        yield from _leaves(value)
    elif isinstance(mask, Mapping) and isinstance(value, Mapping):
        for key, sub_mask in mask.items():
            yield from _sensitive_leaves(value.get(key), sub_mask)
    elif isinstance(mask, list) and isinstance(value, list):
        for item, sub_mask in zip(value, mask, strict=False):
            yield from _sensitive_leaves(item, sub_mask)


def _leaves(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int | float):
        yield json.dumps(value)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)


def _variants(secrets: Iterable[str]) -> Iterator[str]:
    """Each secret as it may appear in text: verbatim, JSON-escaped, line by line.

    A multi-line secret (a private key) is re-indented or wrapped by whatever prints
    it, so its lines are masked one by one as well.
    """
    for secret in secrets:
        escaped = json.dumps(secret)[1:-1]
        lines = [line.strip() for line in secret.splitlines()] if "\n" in secret else []
        for variant in (secret, escaped, *lines):
            if len(variant) >= MIN_SECRET_LENGTH:
                yield variant


def _list(plan_json: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    return list(plan_json.get(key) or ())
