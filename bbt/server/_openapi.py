"""The OpenAPI document of the app, drawn from the one routing table.

FastAPI writes the document (and serves it with the docs UI), but it no longer routes
requests: :class:`~bbt.server._core.ServiceCore` does, by :data:`bbt.server._routes.ROUTES`.
Each route of that table is declared here as an operation whose signature only describes
it (its body, path and query parameters) so FastAPI documents exactly what is served.
"""

from __future__ import annotations

import inspect
from typing import Any

from fastapi import FastAPI, Path, Query
from pydantic import BaseModel

from bbt.protocol import SessionFeaturesRequest, SessionLogitsRequest
from bbt.protocol.frame import FRAME_CONTENT_TYPE
from bbt.server._routes import MAX_SESSION_ID_CHARS, ROUTES, Route


def _frame_body(model: str) -> dict[str, Any]:
    """A session body carrying z, parsed by hand (JSON or a binary frame): documented as both."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}},
                FRAME_CONTENT_TYPE: {
                    "schema": {
                        "type": "string",
                        "format": "binary",
                        "description": "uint32 LE header length, the JSON request with "
                        "z.data empty, then z's raw little-endian bytes "
                        "(docs/protocol.md).",
                    },
                },
            },
        }
    }


#: The session routes whose body is parsed by hand, by endpoint: the model it documents.
_FRAMED: dict[str, type[BaseModel]] = {
    "session_logits": SessionLogitsRequest,
    "session_features": SessionFeaturesRequest,
}


def _parameters(route: Route) -> list[inspect.Parameter]:
    """The endpoint's parameters as FastAPI reads them: path, then body, then query."""
    kw = inspect.Parameter.KEYWORD_ONLY
    params: list[inspect.Parameter] = []
    for name in route.pattern.groupindex:
        default: Any = inspect.Parameter.empty
        if name == "session_id":
            default = Path(
                description="The id from opening the session.", max_length=MAX_SESSION_ID_CHARS
            )
        params.append(inspect.Parameter(name, kw, annotation=str, default=default))
    if route.body is not None:
        params.append(inspect.Parameter("req", kw, annotation=route.body))
    for name, description in route.query.items():
        default = Query(None, description=description)
        params.append(inspect.Parameter(name, kw, annotation=str | None, default=default))
    return params


def _described(route: Route) -> Any:
    async def endpoint(**_: Any) -> None:  # pragma: no cover - ServiceCore routes instead
        raise RuntimeError(f"{route.method} {route.path} is routed by ServiceCore")

    endpoint.__signature__ = inspect.Signature(_parameters(route))  # type: ignore[attr-defined]
    endpoint.__name__ = route.endpoint
    endpoint.__doc__ = route.doc
    return endpoint


def describe_routes(app: FastAPI, *, registry: bool) -> None:
    """Declare every served route on ``app`` for its OpenAPI document.

    ``registry`` says whether the prompt registry's routes are served (and so documented).
    """
    for route in ROUTES:
        if route.registry and not registry:
            continue
        app.add_api_route(
            route.path,
            _described(route),
            methods=[route.method],
            response_model=route.response,
            tags=[route.tag],
            name=route.endpoint,
            openapi_extra=(
                _frame_body(_FRAMED[route.endpoint].__name__) if route.endpoint in _FRAMED else None
            ),
        )

    def openapi() -> dict[str, Any]:
        # The session bodies carrying z are parsed by hand (JSON or a binary frame), so FastAPI
        # does not list its schema by itself.
        if app.openapi_schema is None:
            doc = FastAPI.openapi(app)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            ref = "#/components/schemas/{model}"
            for model in _FRAMED.values():
                schema = model.model_json_schema(ref_template=ref)
                for name, sub in schema.pop("$defs", {}).items():
                    schemas.setdefault(name, sub)
                schemas[model.__name__] = schema
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
