"""The OpenAPI document is valid, complete, and documents the error envelope."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from bbt.server import MockBackend
from bbt.server.app import create_app

validator = pytest.importorskip("openapi_spec_validator")


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    app = create_app(MockBackend())
    r = TestClient(app).get("/openapi.json")
    assert r.status_code == 200
    doc: dict[str, Any] = r.json()
    return doc


def test_spec_validates(spec: dict[str, Any]) -> None:
    validator.validate(spec)


def test_all_routes_listed(spec: dict[str, Any]) -> None:
    assert {(p, m) for p, ops in spec["paths"].items() for m in ops} == {
        ("/v1/models", "get"),
        ("/v1/tokenize", "post"),
        ("/v1/embeddings", "post"),
        ("/v1/logits", "post"),
        ("/healthz", "get"),
        # Projection sessions (protocol 1.1).
        ("/v1/sessions", "post"),
        ("/v1/sessions/{session_id}/logits", "post"),
        ("/v1/sessions/{session_id}", "delete"),
        # Features (protocol 1.3).
        ("/v1/features", "post"),
        ("/v1/sessions/{session_id}/features", "post"),
        # Prompt log-probabilities (protocol 1.6).
        ("/v1/score", "post"),
    }


def test_operations_document_bodies_and_errors(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    assert "ErrorEnvelope" in schemas
    assert "HTTPValidationError" not in schemas  # FastAPI's default 422 body is replaced
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op["summary"] or op["description"], (path, method)
            responses = op["responses"]
            assert "200" in responses
            for status in ("401", "404", "422", "429", "500", "503"):
                ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorEnvelope"), (path, status)
            if method == "post":
                assert "requestBody" in op
