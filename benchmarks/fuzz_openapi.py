"""Fuzz: property-based requests from the served OpenAPI schema against a live server.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/fuzz_openapi.py [--smoke] [--requests N]
        [--hf N] [--out-dir DIR] [--families F,...]

Starts ``bbt mock-server`` (with an API key) on a loopback port, reads ``GET
/openapi.json`` from it, inlines every ``$ref`` and builds, for every route and method in
it, hypothesis strategies (``hypothesis-jsonschema``) for the request bodies. Families:

- ``schema``: a body drawn from the route's request schema, sent to that route.
- ``near_valid``: a valid request (built from ``/v1/models``) with one or two fields
  replaced by schema-drawn values, or a logits request with drawn shapes, non-finite or
  huge prompt values, texts with 0, 1 or 2 masks, long or odd unicode texts.
- ``malformed``: wrong JSON types, huge numbers (2**63, 1e400, huge shapes), bad base64,
  broken JSON (truncated, garbage, invalid UTF-8, NaN, deep nesting, non-objects), bad
  headers (content type, Authorization, X-Request-ID).
- ``routes``: every route x every HTTP method, and unknown routes.
- ``raw``: a fixed list of malformed HTTP/1.1 over a plain socket (bad request line,
  Content-Length, chunking).
- ``registry`` and ``sessions`` (``--families registry,sessions``; not in the default
  run): stateful sequences over the prompt registry and projection sessions, with three
  API keys and small quotas; their requests, oracle and server set-up are in
  ``fuzz_stateful.py``. Writes ``results/fuzz_registry_sessions.json``.

Every request goes to the live server over HTTP and, the same bytes, to the same app
in-process (FastAPI's TestClient over ``create_app``). Passes when no answer is 5xx (but
the documented 503 that the stateful families' oracle accepts, and which it checks), no
request fails at the transport level (raw HTTP excepted, where closing is a fair answer),
the server still answers ``/healthz`` at the end, and it is still the same process.
Reports the status histograms and the server's RSS at start, middle and end. With
``--hf N``, N more requests from the same families go to ``bbt serve`` (the real model).
Writes ``results/fuzz.json`` (``fuzz_smoke.json``); exits 1 on any unexpected 5xx or crash.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _common import RESULTS, write_result
from _loadfuzz import ServerProc, cpu_flags, git_commit
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hseed
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD")
EXTRA_PATHS = ("/", "/v1", "/v1/", "/v1/logits/", "/v2/logits", "/v1/models/x", "/docs",
               "/openapi.json", "/%00", "/v1/" + "a" * 3000)  # fmt: skip
REQUEST_TIMEOUT_S = 60.0
#: The oracle's verdict on a 503 the protocol documents (see ``fuzz_stateful.judge``).
TYPED_503 = "typed-503"
#: The families built from the served schema, and the stateful ones of ``fuzz_stateful``.
SCHEMA_FAMILIES = ("schema", "near_valid", "malformed", "routes")
STATEFUL_FAMILIES = ("registry", "sessions")


@dataclass(frozen=True)
class Req:
    family: str
    method: str
    path: str
    body: bytes | None
    headers: tuple[tuple[str, str], ...] = ()
    auth: bool = True  # add the right Authorization header unless headers set one
    key: int = 0  # which of the server's API keys authorises it (OWNER: see fuzz_stateful)
    #: For the stateful families: what the request does (``fuzz_stateful.ANSWERS``) and
    #: the server-made id it names, ``(kind, index)``, put in place of ``{ref}`` in the
    #: path. Ids differ between the live server and the in-process app, so each target
    #: resolves the reference against the ids it handed out itself.
    op: str = ""
    ref: tuple[str, int] | None = None


@dataclass
class Tally:
    """What the requests got back, for one target."""

    statuses: Counter[str] = field(default_factory=Counter)
    by_family: dict[str, Counter[str]] = field(default_factory=dict)
    by_op: dict[str, Counter[str]] = field(default_factory=dict)  # stateful families
    server_errors: list[dict[str, Any]] = field(default_factory=list)
    transport_errors: list[dict[str, Any]] = field(default_factory=list)
    #: Answers the oracle of the stateful families refused (an unexpected 5xx, a body
    #: that is not the protocol's envelope), and the documented 503s it accepted.
    violations: int = 0
    violation_examples: list[dict[str, Any]] = field(default_factory=list)
    typed_503: int = 0

    def add(self, req: Req, status: str, detail: str = "") -> None:
        self.statuses[status] += 1
        self.by_family.setdefault(req.family, Counter())[status] += 1
        if req.op:
            self.by_op.setdefault(f"{req.family}:{req.op}", Counter())[status] += 1
        if status.isdigit() and int(status) >= 500 and len(self.server_errors) < 50:
            self.server_errors.append(_describe(req, status, detail))

    def judge(self, req: Req, status: str, verdict: str | None) -> None:
        """Record the oracle's ``verdict`` on one answer: None is fine, ``"typed-503"`` a
        documented 503, anything else says what was wrong."""
        if verdict == TYPED_503:
            self.typed_503 += 1
        elif verdict is not None:
            self.violations += 1
            if len(self.violation_examples) < 50:
                self.violation_examples.append(_describe(req, status, verdict))

    def as_dict(self) -> dict[str, Any]:
        responses_5xx = sum(n for s, n in self.statuses.items() if s.isdigit() and int(s) >= 500)
        return {
            "requests": sum(self.statuses.values()),
            "statuses": dict(sorted(self.statuses.items())),
            "by_family": {k: dict(sorted(v.items())) for k, v in sorted(self.by_family.items())},
            "by_operation": {k: dict(sorted(v.items())) for k, v in sorted(self.by_op.items())},
            "responses_5xx": responses_5xx,
            # Every 5xx but the documented typed 503s the oracle accepted.
            "unexpected_5xx": responses_5xx - self.typed_503,
            "typed_503": self.typed_503,
            "oracle_violations": self.violations,
            "transport_errors": len(self.transport_errors),
            "examples_5xx": self.server_errors[:10],
            "examples_oracle_violations": self.violation_examples[:10],
            "examples_transport_errors": self.transport_errors[:10],
        }


def _describe(req: Req, status: str, detail: str) -> dict[str, Any]:
    body = req.body or b""
    return {
        "family": req.family,
        "method": req.method,
        "path": req.path[:80],
        "status": status,
        "body_head": body[:300].decode("utf-8", "replace"),
        "detail": detail[:300],
    }


# --------------------------------------------------------------------------- schema


def inline_refs(node: Any, root: dict[str, Any], depth: int = 0) -> Any:
    """``node`` with every local ``$ref`` replaced by (a copy of) its target."""
    if depth > 50:
        raise ValueError("$ref nesting too deep (a recursive schema?)")
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = root
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            merged = {**inline_refs(target, root, depth + 1)}
            merged.update({k: v for k, v in node.items() if k != "$ref"})
            return merged
        return {k: inline_refs(v, root, depth + 1) for k, v in node.items()}
    if isinstance(node, list):
        return [inline_refs(v, root, depth + 1) for v in node]
    return node


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    body_schema: dict[str, Any] | None


def operations(spec: dict[str, Any]) -> list[Operation]:
    ops = []
    for path, item in sorted(spec["paths"].items()):
        for method, op in sorted(item.items()):
            content = op.get("requestBody", {}).get("content", {})
            schema = content.get("application/json", {}).get("schema")
            resolved = inline_refs(schema, spec) if schema is not None else None
            ops.append(Operation(method.upper(), path, resolved))
    return ops


def schema_strategy(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid under ``schema`` (``$ref``-free): hypothesis-jsonschema for every leaf.

    Objects are assembled here: hypothesis-jsonschema 0.23.1's object generator calls a
    hypothesis internal (``many.more``) that hypothesis 6.170 no longer has. The protocol's
    request models are closed objects (``additionalProperties: false``), so required and
    optional properties are all there is to draw.
    """
    props = schema.get("properties")
    alternatives = schema.get("anyOf")
    if isinstance(alternatives, list) and alternatives:
        # An optional model (``X | None``, e.g. a session's p0 tensor): each branch here,
        # so an object inside never reaches hypothesis-jsonschema's object generator.
        return st.one_of([schema_strategy(branch) for branch in alternatives])
    if schema.get("type") == "object" and isinstance(props, dict):
        required = set(schema.get("required", ()))
        return st.fixed_dictionaries(
            {k: schema_strategy(v) for k, v in props.items() if k in required},
            optional={k: schema_strategy(v) for k, v in props.items() if k not in required},
        )
    return from_schema(schema)


# --------------------------------------------------------------------------- strategies


def _dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


def _tensor(arr: np.ndarray[Any, Any]) -> dict[str, Any]:
    return {
        "dtype": str(arr.dtype),
        "shape": list(arr.shape),
        "data": base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode(),
    }


class Strategies:
    """Every request family, for one server's schema and model."""

    def __init__(self, spec: dict[str, Any], info: dict[str, Any]) -> None:
        self.ops = operations(spec)
        self.post_ops = [o for o in self.ops if o.body_schema is not None]
        self.info = info
        self.model = info["id"]
        self.hidden = int(info["hidden_size"])
        self.mask = info["mask_token"]
        self.vocab = int(info["vocab_size"])
        self.max_chars = int(info["limits"]["max_text_chars"])
        self._bodies = {
            (o.method, o.path): schema_strategy(o.body_schema)
            for o in self.post_ops
            if o.body_schema
        }
        self._props = {
            (o.method, o.path): {
                name: schema_strategy(sub)
                for name, sub in (o.body_schema or {}).get("properties", {}).items()
            }
            for o in self.post_ops
        }

    # -- valid bodies, the starting point of the mutating families
    def valid(self, path: str) -> dict[str, Any]:
        text = f"a good film {self.mask} ."
        if path.endswith("/tokenize"):
            return {"model": self.model, "texts": [text, "plain words"]}
        if path.endswith("/embeddings"):
            return {"model": self.model, "token_ids": [1, 2, 3]}
        prompts = np.zeros((2, 3, self.hidden), dtype=np.float32)
        return {
            "model": self.model,
            "prompts": _tensor(prompts),
            "texts": [text, f"bad {self.mask}"],
            "candidate_ids": [3, 4],
        }

    def texts(self) -> st.SearchStrategy[str]:
        m = self.mask
        return st.one_of(
            st.just(f"good {m} ."),
            st.just("no mask at all"),
            st.just(f"{m} {m}"),
            st.text(max_size=40).map(lambda t: f"{t} {m}"),
            st.integers(self.max_chars - 8, self.max_chars + 8).map(
                lambda k: (f"{m} " + "word " * k)[:k]
            ),
            st.sampled_from(["\u0000 " + m, "\U0001f600" * 50 + m, "\ud800 " + m, m + "\u202e"]),
        )

    def prompts(self) -> st.SearchStrategy[dict[str, Any]]:
        h = self.hidden
        values = st.one_of(
            st.just(0.0),
            st.floats(-1e4, 1e4, width=32),
            st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e30, -1e38, 1e4 + 1]),
        )

        @st.composite
        def build(draw: st.DrawFn) -> dict[str, Any]:
            p = draw(st.integers(0, 4))
            n = draw(st.integers(0, 6))
            width = draw(st.sampled_from([h, h, h, h - 1, h + 1, 0]))
            dtype = draw(st.sampled_from(["float32", "float16"]))
            fill = draw(values)
            with np.errstate(over="ignore"):  # 1e30 as float16 is meant to become inf
                arr = np.full((p, n, width), fill, dtype=np.float32).astype(dtype)
            t = _tensor(arr)
            how = draw(st.sampled_from(["ok", "ok", "short", "long", "shape4", "shape2"]))
            if how == "short":
                t["data"] = t["data"][: len(t["data"]) // 2]
            elif how == "long":
                t["data"] = base64.b64encode(arr.tobytes() + b"\0" * 8).decode()
            elif how == "shape4":
                t["shape"] = [*t["shape"], 1]
            elif how == "shape2":
                t["shape"] = t["shape"][:2]
            return t

        return build()

    def near_valid(self) -> st.SearchStrategy[Req]:
        @st.composite
        def build(draw: st.DrawFn) -> Req:
            op = draw(st.sampled_from(self.post_ops))
            body = self.valid(op.path)
            if op.path.endswith("/logits") and draw(st.booleans()):
                body["prompts"] = draw(self.prompts())
                body["texts"] = draw(st.lists(self.texts(), min_size=1, max_size=4))
                body["candidate_ids"] = draw(
                    st.lists(st.integers(-2, self.vocab + 2), min_size=1, max_size=4)
                )
                body["output_dtype"] = draw(st.sampled_from(["float32", "float16"]))
            elif op.path.endswith("/tokenize") and draw(st.booleans()):
                body["texts"] = draw(st.lists(self.texts(), min_size=1, max_size=4))
                body["add_special_tokens"] = draw(st.booleans())
            else:
                props = self._props[(op.method, op.path)]
                names = draw(st.lists(st.sampled_from(sorted(props)), min_size=1, max_size=2))
                for name in names:
                    body[name] = draw(props[name])
            return Req("near_valid", op.method, op.path, _dumps(body))

        return build()

    def schema(self) -> st.SearchStrategy[Req]:
        @st.composite
        def build(draw: st.DrawFn) -> Req:
            op = draw(st.sampled_from(self.ops))
            if op.body_schema is None:
                return Req("schema", op.method, op.path, None)
            body = draw(self._bodies[(op.method, op.path)])
            if isinstance(body, dict) and "model" in body and draw(st.integers(0, 3)):
                # Mostly the served model: an unknown one stops every request at a 404.
                body["model"] = self.model
            return Req("schema", op.method, op.path, _dumps(body))

        return build()

    def malformed(self) -> st.SearchStrategy[Req]:
        any_json = st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.floats(allow_nan=False),
            st.text(max_size=10),
            st.lists(st.integers(), max_size=3),
            st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
        )
        huge = st.sampled_from(
            ["18446744073709551616", "-9223372036854775809", "1e400", "-1e400", "1e308",
             "123456789012345678901234567890", "NaN", "Infinity", "-0", "4.9e-324"]
        )  # fmt: skip

        @st.composite
        def build(draw: st.DrawFn) -> Req:
            op = draw(st.sampled_from(self.post_ops))
            body = self.valid(op.path)
            kind = draw(
                st.sampled_from(
                    ["wrong_type", "huge_number", "bad_base64", "broken_json", "headers"]
                )
            )
            headers: tuple[tuple[str, str], ...] = ()
            auth = True
            if kind == "wrong_type":
                name = draw(st.sampled_from(sorted(body)))
                body[name] = draw(any_json)
                raw = _dumps(body)
            elif kind == "huge_number":
                number = draw(huge)
                target = draw(st.sampled_from(["ids", "shape", "field"]))
                text = json.dumps(body)
                if target == "ids" and "candidate_ids" in body:
                    text = text.replace('"candidate_ids": [3, 4]', f'"candidate_ids": [{number}]')
                elif target == "ids" and "token_ids" in body:
                    text = text.replace('"token_ids": [1, 2, 3]', f'"token_ids": [{number}, 1]')
                elif target == "shape" and "prompts" in body:
                    old = json.dumps(body["prompts"]["shape"])
                    text = text.replace(f'"shape": {old}', f'"shape": [{number}, 3, {number}]')
                else:
                    text = text[:-1] + f', "extra": {number}}}'
                raw = text.encode()
            elif kind == "bad_base64":
                if "prompts" not in body:
                    op = next(o for o in self.post_ops if o.path.endswith("/logits"))
                    body = self.valid(op.path)
                good = body["prompts"]["data"]
                body["prompts"]["data"] = draw(
                    st.one_of(
                        st.text(max_size=64),
                        st.just(good.rstrip("=")),
                        st.just(good + "="),
                        st.just(good.replace("A", "-")),
                        st.just("!" + good[1:]),
                        st.just(" " + good),
                        st.just(good[:-4] + "\u00e9==="),
                        st.just(base64.urlsafe_b64encode(b"\xfb\xff" * 999).decode()),
                    )
                )
                raw = _dumps(body)
            elif kind == "broken_json":
                blob = _dumps(body)
                cut = draw(st.integers(0, len(blob)))
                raw = draw(
                    st.sampled_from(
                        [
                            blob[:cut],
                            blob + b"garbage",
                            blob.replace(b"{", b"\xff", 1),
                            blob.replace(b'"model"', b"'model'"),
                            b"[" * 100_000 + b"]" * 100_000,
                            b'{"a":' * 20_000 + b"1" + b"}" * 20_000,
                            b"[]",
                            b"null",
                            b'"string"',
                            b"12",
                            b"",
                            b"   ",
                            b'{"model": NaN}',
                            blob[:-1] + b', "model": "other"}',
                            b"\xef\xbb\xbf" + blob,
                            blob.decode().encode("utf-16"),
                        ]
                    )
                )
            else:
                raw = _dumps(body)
                auth = False
                headers = draw(
                    st.sampled_from(
                        [
                            (("content-type", "text/plain"),),
                            (("content-type", "application/x-www-form-urlencoded"),),
                            (),
                            (("authorization", "Bearer wrong-key"),),
                            (("authorization", "Basic dXNlcjpwdw=="),),
                            (("authorization", "bearer"),),
                            (("x-request-id", "x" * 5000),),
                            (("x-request-id", "../../etc/passwd"),),
                            (("x-bbt-protocol", "999"),),
                            (("accept", "text/html"),),
                            (("content-encoding", "gzip"),),
                        ]
                    )
                )
                auth = not any(k == "authorization" for k, _ in headers) and draw(st.booleans())
            return Req(f"malformed:{kind}", op.method, op.path, raw, headers, auth)

        return build()

    def routes(self) -> st.SearchStrategy[Req]:
        paths = sorted({o.path for o in self.ops} | set(EXTRA_PATHS))

        @st.composite
        def build(draw: st.DrawFn) -> Req:
            path = draw(st.sampled_from(paths))
            method = draw(st.sampled_from(METHODS))
            body = draw(st.sampled_from([None, b"{}", _dumps(self.valid("/v1/tokenize"))]))
            return Req("routes", method, path, None if method == "HEAD" else body)

        return build()


#: ``AUTH`` becomes the server's Authorization header, so /v1 requests get past the key check.
RAW_REQUESTS: list[bytes] = [
    b"GARBAGE\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
    b"POST /v1/logits HTTP/1.1\r\nHost: x\r\nAUTH\r\nContent-Length: abc\r\n\r\n",
    b"POST /v1/logits HTTP/1.1\r\nHost: x\r\nAUTH\r\nContent-Length: -5\r\n\r\n",
    b"POST /v1/logits HTTP/1.1\r\nHost: x\r\nAUTH\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"POST /v1/logits HTTP/1.1\r\nHost: x\r\nAUTH\r\nContent-Length: 100\r\n\r\n{}",
    b"POST /v1/tokenize HTTP/1.1\r\nHost: x\r\nAUTH\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /v1/tokenize HTTP/1.1\r\nHost: x\r\nAUTH\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"100000\r\n"
    + b"{" * 0x100000
    + b"\r\n0\r\n\r\n",
    b"POST /v1/tokenize HTTP/1.1\r\nHost: x\r\nAUTH\r\nContent-Length: 2\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
    # httpx refuses to send these two headers; the server must still cope with them.
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \x01\xff\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 100_000 + b"\r\n\r\n",
    b"GET /\x00\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(500)) + b"\r\n",
]


def send_raw(host: str, port: int, data: bytes) -> str:
    """Send raw bytes; the status of the answer, or 'closed' when the server hung up."""
    with socket.create_connection((host, port), timeout=20) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return "closed"
        chunks = b""
        try:
            while len(chunks) < 64:
                got = sock.recv(4096)
                if not got:
                    break
                chunks += got
        except OSError:
            pass
    first = chunks.split(b"\r\n", 1)[0].split()
    return first[1].decode() if len(first) >= 2 and first[1].isdigit() else "closed"


# --------------------------------------------------------------------------- driver


class Target:
    """What a stateful family needs from one target: the ids it handed out, and a check of
    each answer. The schema families use this no-op base."""

    def path(self, req: Req) -> str:
        """``req.path`` with ``{ref}`` replaced by this target's id for ``req.ref``."""
        return req.path

    def key(self, req: Req) -> int:
        """The API key (index) ``req`` goes with (after :meth:`path` resolved its ref)."""
        return req.key

    def observe(self, req: Req, response: httpx.Response) -> str | None:
        """Remember the ids in ``response``; the oracle's verdict (see :meth:`Tally.judge`)."""
        return None


class Fuzzer:
    def __init__(
        self,
        base_url: str,
        key: str | list[str],
        inproc: Any | None,
        on_request: Callable[[int], None] | None = None,
        targets: Callable[[], tuple[Target, Target]] | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        # ``http``: another client for the "live" side (tests pass the in-process core's).
        self.http = http or httpx.Client(base_url=base_url, timeout=REQUEST_TIMEOUT_S)
        self.keys = [key] if isinstance(key, str) else list(key)
        self.key = self.keys[0]
        self.inproc = inproc
        self.live = Tally()
        self.local = Tally()
        self.mismatches: list[dict[str, Any]] = []
        self.count = 0
        self.on_request = on_request
        self.live_target, self.local_target = targets() if targets else (Target(), Target())

    def close(self) -> None:
        self.http.close()

    def headers(self, req: Req, key: int | None = None) -> dict[str, str]:
        h = {"content-type": "application/json"} if req.body is not None else {}
        if req.auth:
            h["authorization"] = f"Bearer {self.keys[req.key if key is None else key]}"
        h.update(dict(req.headers))
        return h

    def send(self, req: Req) -> None:
        target = self.live_target
        path = target.path(req)
        headers = self.headers(req, target.key(req))
        try:
            r = self.http.request(req.method, path, content=req.body, headers=headers)
            status = str(r.status_code)
            self.live.add(req, status, r.text if r.status_code >= 500 else "")
            self.live.judge(req, status, target.observe(req, r))
        except httpx.HTTPError as exc:
            status = f"transport:{type(exc).__name__}"
            self.live.add(req, status)
            if len(self.live.transport_errors) < 50:
                self.live.transport_errors.append(_describe(req, status, str(exc)))
        if self.inproc is not None:
            target = self.local_target
            path = target.path(req)
            headers = self.headers(req, target.key(req))
            lr = self.inproc.request(req.method, path, content=req.body, headers=headers)
            self.local.add(req, str(lr.status_code), lr.text if lr.status_code >= 500 else "")
            self.local.judge(req, str(lr.status_code), target.observe(req, lr))
            if str(lr.status_code) != status and len(self.mismatches) < 20:
                self.mismatches.append({**_describe(req, status, ""), "inproc": lr.status_code})
        self.count += 1
        if self.on_request is not None:
            self.on_request(self.count)

    def run_family(self, strategy: st.SearchStrategy[Req], n: int, seed: int) -> None:
        @hseed(seed)
        @settings(
            max_examples=n,
            database=None,
            deadline=None,
            phases=[Phase.generate],
            verbosity=Verbosity.quiet,
            suppress_health_check=[
                HealthCheck.too_slow,
                HealthCheck.data_too_large,
                HealthCheck.filter_too_much,
                HealthCheck.large_base_example,
            ],
        )
        @given(strategy)
        def one(req: Req) -> None:
            self.send(req)

        one()


#: Each schema family's share of a run's requests; the stateful families share equally.
SCHEMA_SHARES = {"schema": 0.35, "near_valid": 0.25, "malformed": 0.30, "routes": 0.10}


def _shares(families: tuple[str, ...]) -> dict[str, float]:
    weights = {f: SCHEMA_SHARES.get(f, 0.5) for f in families}
    total = sum(weights.values())
    return {f: w / total for f, w in weights.items()}


def fuzz_target(
    label: str,
    command: str,
    server_args: list[str],
    total: int,
    work: Path,
    inproc: bool,
    time_limit_s: float,
    families: tuple[str, ...] = SCHEMA_FAMILIES,
) -> dict[str, Any]:
    stateful: Any = None
    if any(f in STATEFUL_FAMILIES for f in families):
        import fuzz_stateful as stateful  # it imports this module: not at the top

        campaign = stateful.Campaign()
        keys, env = campaign.keys, campaign.env()
        server_args = [*server_args, *campaign.server_args]
    else:
        keys = ["fuzz-" + secrets.token_hex(8)]
        env = {"BBT_SERVER_API_KEYS": keys[0]}
    key = keys[0]
    with ServerProc(command, server_args, work / f"{label}.log", env=env) as srv:
        spec = httpx.get(f"{srv.base_url}/openapi.json", timeout=30).json()
        info = httpx.get(
            f"{srv.base_url}/v1/models", headers={"authorization": f"Bearer {key}"}, timeout=30
        ).json()["data"][0]
        strategies = Strategies(spec, info)
        pid = srv.pid
        rss: list[dict[str, Any]] = [{"after": 0, **srv.memory_kib()}]

        def sample(count: int) -> None:
            if count % max(1, total // 8) == 0:
                rss.append({"after": count, **srv.memory_kib()})

        client_cm: Any = None
        local: Any = None
        if inproc:
            from fastapi.testclient import TestClient
            from pydantic import SecretStr

            from bbt.server import MockBackend, ServerSettings
            from bbt.server.app import create_app

            if stateful is not None:
                app = campaign.app()
            else:
                app = create_app(MockBackend(), ServerSettings(api_keys=[SecretStr(key)]))
            client_cm = TestClient(app, raise_server_exceptions=False, follow_redirects=False)
            local = client_cm.__enter__()
        targets = None if stateful is None else stateful.targets
        fuzzer = Fuzzer(srv.base_url, keys, local, sample, targets)
        started = time.monotonic()
        try:
            schema_families = {
                "schema": strategies.schema,
                "near_valid": strategies.near_valid,
                "malformed": strategies.malformed,
                "routes": strategies.routes,
            }
            round_no = 0
            while fuzzer.count < total and time.monotonic() - started < time_limit_s:
                left = total - fuzzer.count
                for family, share in _shares(families).items():
                    n = max(1, int(left * share))
                    if family in schema_families:
                        fuzzer.run_family(schema_families[family](), n, seed=round_no)
                    else:
                        stateful.run(fuzzer, info, family, n, seed=round_no)
                round_no += 1
            raw = Counter(
                send_raw(
                    "127.0.0.1",
                    int(srv.base_url.rsplit(":", 1)[1]),
                    data.replace(b"AUTH", f"Authorization: Bearer {key}".encode()),
                )
                for data in RAW_REQUESTS
            )
            rss.append({"after": fuzzer.count, **srv.memory_kib()})
            alive_same = srv.alive() and srv.pid == pid
            healthy = srv.healthy()
        finally:
            fuzzer.close()
            if client_cm is not None:
                client_cm.__exit__(None, None, None)
    mib = [round(r["VmRSS"] / 1024, 1) for r in rss]
    mid = mib[len(mib) // 2]
    flat = mib[-1] - mid <= max(8.0, 0.05 * mid)
    live = fuzzer.live.as_dict()
    local_tally = fuzzer.local.as_dict() if inproc else None
    return {
        "target": label,
        "families": list(families),
        "server": ["bbt", command, *server_args],
        "seconds": round(time.monotonic() - started, 1),
        "live": live,
        "inprocess": local_tally,
        "live_vs_inprocess_mismatches": fuzzer.mismatches,
        "raw_http": dict(sorted(raw.items())),
        "server_alive_same_process": alive_same,
        "healthz_at_end": healthy,
        "rss_mib": {"start": mib[0], "middle": mid, "end": mib[-1], "series": mib},
        "rss_samples": rss,
        "memory_flat": flat,
        "ok": _clean(live)
        and live["transport_errors"] == 0
        and alive_same
        and healthy
        and (local_tally is None or _clean(local_tally))
        # The stateful families' server holds bounded state (quotas): its RSS must not grow
        # in the second half. The schema families report it only, as they always have.
        and (flat or stateful is None),
    }


def _clean(tally: dict[str, Any]) -> bool:
    """No 5xx but the documented typed 503s, and no answer the oracle refused."""
    return bool(tally["unexpected_5xx"] == 0 and tally["oracle_violations"] == 0)


def report(r: dict[str, Any]) -> None:
    live = r["live"]
    server = " ".join(r["server"])
    print(f"\n## {r['target']} ({server}): {live['requests']} requests in {r['seconds']}s")
    print(f"live statuses: {live['statuses']}")
    if r["inprocess"]:
        print(f"in-process statuses: {r['inprocess']['statuses']}")
        print(f"live/in-process status mismatches: {len(r['live_vs_inprocess_mismatches'])}")
    print(f"raw HTTP: {r['raw_http']}")
    print(
        f"5xx: {live['responses_5xx']} (unexpected {live['unexpected_5xx']}, typed 503 "
        f"{live['typed_503']}), oracle violations: {live['oracle_violations']}, "
        f"transport errors: {live['transport_errors']}, "
        f"alive: {r['server_alive_same_process']}, /healthz at end: {r['healthz_at_end']}"
    )
    m = r["rss_mib"]
    print(
        f"server RSS MiB start {m['start']} middle {m['middle']} end {m['end']} "
        f"(flat: {r['memory_flat']})"
    )
    examples = live["examples_5xx"][:3] + live["examples_oracle_violations"][:3]
    for ex in examples + live["examples_transport_errors"][:3]:
        print(f"  e.g. {ex}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="~100 requests, mock only")
    ap.add_argument("--requests", type=int, default=None, help="against the mock (default 2400)")
    ap.add_argument("--hf", type=int, default=0, help="requests against bbt serve (0: none)")
    ap.add_argument("--no-inprocess", action="store_true", help="skip the in-process app")
    ap.add_argument("--out-dir", type=Path, default=None)
    ap.add_argument("--time-limit", type=float, default=900.0, help="seconds per target")
    ap.add_argument(
        "--families",
        default=",".join(SCHEMA_FAMILIES),
        help="comma-separated, from: " + ", ".join(SCHEMA_FAMILIES + STATEFUL_FAMILIES),
    )
    args = ap.parse_args(argv)
    families = tuple(f.strip() for f in args.families.split(",") if f.strip())
    unknown = sorted(set(families) - set(SCHEMA_FAMILIES + STATEFUL_FAMILIES))
    if unknown or not families:
        ap.error(f"unknown families: {', '.join(unknown) or '(none given)'}")
    total = args.requests or (100 if args.smoke else 2400)
    commit = git_commit()  # the commit this run starts on

    import tempfile

    results = []
    with tempfile.TemporaryDirectory(prefix="bbt-fuzz-") as tmp:
        work = Path(tmp)
        targets: list[tuple[str, str, list[str], int, bool]] = [
            ("mock", "mock-server", [], total, not args.no_inprocess)
        ]
        if args.hf and not args.smoke:
            targets.append(
                ("hf", "serve", ["--dtype", "bfloat16", "--threads", "2"], args.hf, False)
            )
        for label, command, server_args, n, inproc in targets:
            print(f"fuzzing {label} ({n} requests) ...", flush=True)
            r = fuzz_target(label, command, server_args, n, work, inproc, args.time_limit, families)
            report(r)
            results.append(r)
    ok = all(r["ok"] for r in results)
    # results/fuzz.json for the schema families; fuzz_registry_sessions.json for those two.
    name = "fuzz" if families == SCHEMA_FAMILIES else "_".join(["fuzz", *families])
    write_result(
        f"{name}_smoke" if args.smoke else name,
        {"commit": commit, "cpu_flags": cpu_flags(), "ok": ok, "targets": results},
        args.out_dir or RESULTS,
    )
    print(f"\nfuzz: {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    # fuzz_stateful imports this module by name: let it find this one, not load a copy.
    sys.modules.setdefault("fuzz_openapi", sys.modules[__name__])
    sys.exit(main())
