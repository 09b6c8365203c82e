"""One route table for the JSON API: it registers the Flask routes and writes the OpenAPI.

Each `ApiRoute` names its path, its parameter/body/answer models (api_models.py), the
role it needs and its handler. `register` turns every row into a Flask view that
validates the query string and body with those models (400 naming the field, never a
500) and serialises the handler's answer with the answer model; `openapi_document`
turns the same rows into the OpenAPI 3.1 document at `/api/openapi.json`. A route that
is not in the table does not exist, and one that is cannot be missing from the document.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from flask import Blueprint, Response, jsonify, request
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import models_json_schema

from runner.web.api_models import ErrorOut
from runner.web.auth import Role, require_role

Method = Literal["GET", "POST"]
JSON = "application/json"
_PATH_PARAM = re.compile(r"\{(\w+)\}")
_REF_TEMPLATE = "#/components/schemas/{model}"


class ApiError(Exception):
    """An answer other than success, raised by a handler: status and message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass(frozen=True)
class ApiRoute:
    """One operation: where, who may, what goes in and what comes out."""

    method: Method
    path: str  # OpenAPI form; `{name}` parameters are integers (ids)
    name: str
    summary: str
    handler: Callable[..., Any]
    answer: type[BaseModel] | None  # None: `media_type` text, not JSON
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    status: int = 200
    role: Role = Role.VIEWER
    media_type: str = JSON
    errors: tuple[int, ...] = ()
    tags: tuple[str, ...] = field(default=())

    @property
    def flask_rule(self) -> str:
        return _PATH_PARAM.sub(r"<int:\1>", self.path)

    @property
    def path_params(self) -> list[str]:
        return _PATH_PARAM.findall(self.path)


def register(blueprint: Blueprint, routes: list[ApiRoute]) -> None:
    """Add every route of the table to `blueprint`, guarded by its role."""
    for route in routes:
        view = require_role(route.role)(_view(route))
        blueprint.add_url_rule(route.flask_rule, route.name, view, methods=[route.method])


def _view(route: ApiRoute) -> Callable[..., Response]:
    def view(**path: int) -> Response:
        try:
            arguments: dict[str, Any] = dict(path)
            if route.query is not None:
                arguments["query"] = _parse_query(route.query)
            if route.body is not None:
                arguments["body"] = _parse_body(route.body)
            return _answer(route, route.handler(**arguments))
        except ApiError as error:
            response = jsonify(ErrorOut(error=error.message).model_dump())
            response.status_code = error.status
            response.headers.update(error.headers)
            return response

    view.__name__ = route.name
    view.__doc__ = route.summary
    return view


def _parse_query(model: type[BaseModel]) -> BaseModel:
    try:
        return model.model_validate(query_values())
    except ValidationError as error:
        raise ApiError(400, describe(error)) from None


def query_values() -> dict[str, str]:
    """The query string, one value per name; an empty field (a blank form input) is absent."""
    return {name: value for name, value in request.args.items() if value != ""}


def _parse_body(model: type[BaseModel]) -> BaseModel:
    # JSON only: a browser on another site cannot send it without a CORS preflight.
    if not request.is_json:
        raise ApiError(415, "send Content-Type: application/json with a JSON object body")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as error:
        raise ApiError(400, describe(error)) from None


def describe(error: ValidationError) -> str:
    """`limit: Input should be less than or equal to 500; ...`, never the input's echo."""
    parts = []
    for problem in error.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in problem["loc"]) or "body"
        parts.append(f"{where}: {problem['msg']}")
    return "; ".join(parts)


def _answer(route: ApiRoute, result: Any) -> Response:
    if isinstance(result, Response):
        return result
    assert isinstance(result, BaseModel), f"{route.name} must answer a model"
    response = jsonify(result.model_dump(mode="json", by_alias=True))
    response.status_code = route.status
    return response


# ---- the document ------------------------------------------------------------------------


def openapi_document(routes: list[ApiRoute], *, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes`, schemas generated from their models."""
    models = _models(routes)
    _, schemas = models_json_schema(
        [(model, "serialization") for model in models], ref_template=_REF_TEMPLATE
    )
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas.get("$defs", {}),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "gitops_session"},
            },
        },
        "security": [{"bearer": []}, {"session": []}],
    }


def _models(routes: list[ApiRoute]) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = [ErrorOut]
    for route in routes:
        for model in (route.answer, route.body):
            if model is not None and model not in found:
                found.append(model)
    return found


def _operation(route: ApiRoute) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.summary,
        "tags": list(route.tags),
        "parameters": _path_parameters(route) + _query_parameters(route.query),
        "responses": _responses(route),
    }
    if route.role > Role.VIEWER:
        operation["description"] = f"Needs the {route.role.label} role."
    if route.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": _ref(route.body)}},
        }
    return operation


def _path_parameters(route: ApiRoute) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
        }
        for name in route.path_params
    ]


def _query_parameters(model: type[BaseModel] | None) -> list[dict[str, Any]]:
    if model is None:
        return []
    schema = model.model_json_schema(mode="validation", ref_template=_REF_TEMPLATE)
    required = set(schema.get("required", ()))
    definitions = schema.get("$defs", {})
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": _inline(prop, definitions),
        }
        for name, prop in schema["properties"].items()
    ]


def _inline(schema: dict[str, Any], definitions: dict[str, Any]) -> dict[str, Any]:
    """A query parameter's schema: enum references resolved (they are small) and no
    `null` option (a query string has no null: an absent parameter is the None)."""
    if "$ref" in schema:
        return definitions[schema["$ref"].rsplit("/", 1)[1]]
    options = [o for o in schema.get("anyOf", ()) if o != {"type": "null"}]
    if len(options) == 1:
        rest = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
        return {**rest, **_inline(options[0], definitions)}
    return schema


def _responses(route: ApiRoute) -> dict[str, Any]:
    if route.answer is not None:
        content = {JSON: {"schema": _ref(route.answer)}}
    else:
        content = {route.media_type: {"schema": {"type": "string"}}}
    responses: dict[str, Any] = {
        str(route.status): {"description": route.summary, "content": content}
    }
    standard = [401, *([400] if route.query or route.body else []), *route.errors]
    if route.role > Role.VIEWER:
        standard.append(403)
    if route.body is not None:
        standard.append(415)
    for status in sorted(set(standard)):
        responses[str(status)] = {
            "description": _ERROR_TEXT.get(status, "refused"),
            "content": {JSON: {"schema": _ref(ErrorOut)}},
        }
    return responses


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": _REF_TEMPLATE.format(model=model.__name__)}


_ERROR_TEXT = {
    400: "bad parameter or body (the message names the field)",
    401: "not signed in, or a wrong API token",
    403: "signed in without the role this needs",
    404: "no such record",
    409: "the state does not allow it",
    415: "the body is not JSON",
    429: "too many at once; retry later",
    503: "not available in this process",
}
