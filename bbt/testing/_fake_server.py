"""What the engine fakes share (:mod:`bbt.testing.vllm_fake`, :mod:`bbt.testing.sglang_fake`):
the dispatch of a request (injected faults, the key, JSON bodies, routes, error answers), the
``httpx`` transport and ASGI app over it, serving on loopback and the ``python -m`` entry.

An engine's fake adds its routes, its error body and which paths need the key.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from bbt.testing._vllm_model import FakeError, FakeModel

if TYPE_CHECKING:
    from starlette.applications import Starlette

Route = Callable[[Any], Any]
Answer = tuple[int, dict[str, str], Any]
H = TypeVar("H", bound=Callable[..., Any])


def route(method: str, path: str) -> Callable[[H], H]:
    """Mark a :class:`FakeServer` method as the handler of ``method path`` (it takes the
    request's JSON body, ``None`` for a GET, and returns the answer's JSON)."""

    def mark(fn: H) -> H:
        fn.__dict__["fake_route"] = (method, path)
        return fn

    return mark


def _routes_of(cls: type) -> dict[tuple[str, str], str]:
    """``(method, path) -> method name`` of the :func:`route`-marked methods of ``cls`` and
    its bases (found once, kept on the class itself)."""
    if "_fake_routes" not in cls.__dict__:
        # Bases first, so that a subclass's mark of a path replaces its base's.
        marked = [
            (getattr(value, "fake_route", None), name)
            for klass in reversed(cls.__mro__)
            for name, value in vars(klass).items()
        ]
        cls._fake_routes = {where: name for where, name in marked if where is not None}  # type: ignore[attr-defined]
    routes: dict[tuple[str, str], str] = cls.__dict__["_fake_routes"]
    return routes


class FakeServer(FakeModel):
    """An engine fake's logic: ``handle(method, path, headers, body) -> (status, headers,
    JSON)``, plus an ``httpx`` transport and a Starlette app over it."""

    def routes(self) -> Mapping[tuple[str, str], Route]:
        """``(method, path) -> handler(parsed JSON body or None)``: the methods marked
        with :func:`route` (a subclass's override replaces its base's)."""
        return {key: getattr(self, name) for key, name in _routes_of(type(self)).items()}

    def error_body(self, exc: FakeError) -> Any:
        """The JSON of an error answer, as the engine writes it."""
        return {"error": {"message": exc.message}}

    def needs_key(self, path: str) -> bool:
        """Whether a request to ``path`` must carry the API key (when one is set)."""
        return True

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        self._count(requests=1)
        with self._lock:
            fault = self.faults.pop(0) if self.faults else None
        if fault is not None:
            status, retry_after = fault
            extra = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
            return status, extra, self.error_body(FakeError(status, "injected fault"))
        wrong_key = headers.get("authorization", "") != f"Bearer {self.api_key}"
        if self.api_key is not None and self.needs_key(path) and wrong_key:
            return 401, {}, {"error": "Unauthorized"}
        try:
            payload = self._payload(method, path, body)
            route = self.routes().get((method, path))
            if route is None:
                return 404, {}, {"detail": "Not Found"}
            return 200, {}, route(payload)
        except FakeError as exc:
            return exc.status, {}, self.error_body(exc)

    def _payload(self, method: str, path: str, body: bytes) -> Any:
        """A POST's JSON object (kept in :attr:`requests_seen`); ``None`` for a GET."""
        if method != "POST":
            return None
        try:
            payload = json.loads(body or b"null")
        except ValueError:
            raise FakeError(400, "request body is not valid JSON") from None
        if not isinstance(payload, dict):
            raise FakeError(400, "request body must be a JSON object")
        with self._lock:
            self.requests_seen.append({"path": path, "body": payload})
        return payload

    # ---------------------------------------------------------------- transports

    def transport(self) -> httpx.MockTransport:
        """An ``httpx`` transport answering in the caller's thread (no sockets)."""

        def handler(request: httpx.Request) -> httpx.Response:
            headers = {k.lower(): v for k, v in request.headers.items()}
            status, extra, payload = self.handle(
                request.method, request.url.path, headers, request.read()
            )
            return httpx.Response(status, json=payload, headers=extra)

        return httpx.MockTransport(handler)

    def app(self) -> Starlette:
        """An ASGI app serving the fake (Starlette, from ``bbt[server]``), for uvicorn."""
        from starlette.applications import Starlette
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def endpoint(request: Request) -> JSONResponse:
            body = await request.body()
            headers = {k.lower(): v for k, v in request.headers.items()}
            status, extra, payload = await run_in_threadpool(
                self.handle, request.method, request.url.path, headers, body
            )
            return JSONResponse(payload, status_code=status, headers=extra)

        return Starlette(routes=[Route("/{path:path}", endpoint, methods=["GET", "POST"])])


@contextmanager
def serve_fake(fake: FakeServer) -> Iterator[str]:
    """Serve ``fake`` with uvicorn on a free loopback port; yields its base URL."""
    from bbt.testing._live import LiveServer

    with LiveServer(fake.app()) as server:
        yield server.base_url


def serve_main(
    argv: list[str] | None,
    *,
    engine: str,
    port: int,
    add_options: Callable[[argparse.ArgumentParser], None],
    make: Callable[[argparse.Namespace], FakeServer],
) -> int:
    """``python -m bbt.testing.ENGINE_fake``: serve a fake on a port (docs and demos).
    ``add_options`` adds the engine's switches; ``make`` builds the fake from the arguments."""
    import uvicorn

    ap = argparse.ArgumentParser(description=f"Serve bbt's fake of {engine}'s API (offline).")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=port)
    ap.add_argument(
        "--model-files",
        type=Path,
        default=None,
        help="write config.json and embeddings.npy of the fake's model into this directory first",
    )
    ap.add_argument("--api-key", default=None)
    add_options(ap)
    args = ap.parse_args(argv)
    fake = make(args)
    if args.model_files is not None:
        cfg, emb = fake.write_model_files(args.model_files)
        print(f"wrote {cfg} and {emb}", flush=True)
    uvicorn.run(fake.app(), host=args.host, port=args.port, log_level="warning")
    return 0
