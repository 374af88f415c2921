"""The ``registry`` and ``sessions`` fuzz families: stateful, over several API keys.

Driven by ``fuzz_openapi.py --families registry,sessions`` (which starts the servers and
counts the answers). A hypothesis :class:`RuleBasedStateMachine` per family builds valid
requests from ``/v1/models`` and mutates them:

- ``registry``: store prompts (as tensors and by projection recipe) with adversarial
  recipes and labels (lone surrogates as JSON escapes, nesting past the depth bound,
  numbers of 5,000 digits, ``NaN``/``1e400``, strings past the byte bound, odd unicode),
  list with random and garbage ``limit``/``cursor`` values and follow real cursors, get,
  delete and score by real ids (of this key and of others) and bogus ones.
- ``sessions``: open with random and huge ``(n, H, d)`` and ``p0``, bursts of opens past
  the per-key slots, the per-key memory quota and the server's session memory; logits with
  random ``z`` shapes, values (non-finite, huge), dtypes, integers of 5,000 digits as raw
  JSON text, base64 and binary frames; close twice, use after close, use with another key.

Every step goes, as the same bytes, to the live ``bbt mock-server`` and to the in-process
app, both configured by :class:`Campaign` (three keys, small quotas). Server-made ids differ
between the two, so a request names "the k-th prompt this target stored" (``Req.ref``) and
each target's :class:`Refs` puts its own id there.

The oracle (:func:`judge`), on every answer: a 2xx body parses as the operation's response
model, a 4xx as the protocol's error envelope, and no 5xx at all except the one 503 this
campaign can legitimately meet: ``POST /v1/sessions`` answered ``503 unavailable`` with the
envelope and a ``Retry-After`` of at least 1 s when the server's session memory is held by
other keys' sessions (docs/protocol.md, *Lifetime and limits*). The protocol's other 503s
cannot happen here, so any is a failure: queue full (one sequential client never fills a
queue of 16) and registry storage faults (the registry is in memory).
"""

from __future__ import annotations

import json
import math
import secrets
import struct
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, ClassVar

import httpx
import numpy as np
from fuzz_openapi import TYPED_503, Fuzzer, Req, Target, _dumps, _tensor
from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test
from pydantic import BaseModel, ValidationError

from bbt.protocol import (
    ErrorEnvelope,
    LogitsResponse,
    PromptDeleted,
    PromptList,
    SessionClosed,
    SessionInfo,
    StoredPrompt,
)

#: What each operation answers on success; ``Req.op`` names one.
ANSWERS: dict[str, type[BaseModel]] = {
    "store": StoredPrompt,
    "list": PromptList,
    "get": StoredPrompt,
    "delete": PromptDeleted,
    "score": LogitsResponse,
    "open": SessionInfo,
    "logits": LogitsResponse,
    "close": SessionClosed,
}
#: Stand-ins for an id a target has not handed out yet (a well-formed unknown one).
BOGUS = {
    "prompt": "bp_" + "A" * 32,
    "session": "B" * 32,
    "closed": "C" * 32,
    "cursor": "bm90LWEtY3Vyc29y",
}
FRAME = "application/vnd.bbt.frame"
#: ``Req.key`` for "the key that made the id the request names" (else key 0).
OWNER = -1
#: Steps per state-machine run: long enough to fill quotas, short enough to vary.
STEPS = 25
#: 5,001 digits: past Python's int-from-text limit of 4,300, a 422 (never a 500).
HUGE_INT = "9" * 5001


# --------------------------------------------------------------------------- server set-up


@dataclass
class Campaign:
    """Three API keys and small bounds, so quotas, slots and eviction are met within a few
    hundred requests; the live server gets them as environment, the in-process app as
    :class:`~bbt.server.ServerSettings`, from the one dict here."""

    keys: list[str] = field(
        default_factory=lambda: [f"fuzz{i}-{secrets.token_hex(8)}" for i in range(3)]
    )
    #: A session of n=4, d=200 on the mock (H=64) holds 206 KB: two fill a key's quota and
    #: four the server's session memory, so the third key meets the typed 503.
    settings: dict[str, Any] = field(
        default_factory=lambda: {
            "max_sessions_per_key": 3,
            "max_projection_bytes": 256 * 1024,
            "max_session_bytes_per_key": 512 * 1024,
            "max_session_bytes": 1024 * 1024,
            "session_evict_after_s": 1.0,
            "session_idle_timeout_s": 60.0,
            "registry_max_recipe_bytes": 4096,
            "registry_max_recipe_depth": 16,
            "registry_page_size": 5,
            "registry_max_page_size": 20,
            "registry_max_page_bytes": 16 * 1024,
        }
    )
    server_args: tuple[str, ...] = ("--registry", "memory")

    def env(self) -> dict[str, str]:
        out = {"BBT_SERVER_API_KEYS": ",".join(self.keys)}
        out.update({f"BBT_SERVER_{k.upper()}": str(v) for k, v in self.settings.items()})
        return out

    def app(self) -> Any:
        from pydantic import SecretStr

        from bbt.server import MockBackend, ServerSettings
        from bbt.server.app import create_app
        from bbt.server.registry import PromptRegistry

        config = ServerSettings(api_keys=[SecretStr(k) for k in self.keys], **self.settings)
        return create_app(MockBackend(), config, registry=PromptRegistry(":memory:"))


# --------------------------------------------------------------------------- oracle


def judge(req: Req, response: httpx.Response) -> str | None:
    """None when ``response`` is a fair answer to ``req``, ``TYPED_503`` for the documented
    503, else what is wrong with it (see the module docstring)."""
    status = response.status_code
    if 300 <= status < 400:
        # The router's slash redirect (``/v1/sessions/`` with an empty id): no body to check.
        return None if response.headers.get("location") else f"{status} without a Location"
    if status >= 400:
        try:
            envelope = ErrorEnvelope.model_validate_json(response.content)
        except ValidationError:
            return f"{status} without the protocol's error envelope"
        if status < 500:
            return None
        retry = response.headers.get("retry-after", "")
        if (
            status == 503
            and req.op == "open"
            and envelope.error.type == "unavailable"
            and retry.isdigit()
            and int(retry) >= 1
        ):
            return TYPED_503
        return f"unexpected {status} {envelope.error.type}: {envelope.error.message[:200]}"
    model = ANSWERS.get(req.op)
    if model is None:
        return None
    try:
        model.model_validate_json(response.content)
    except ValidationError as exc:
        return f"{status} body is no {model.__name__}: {str(exc)[:200]}"
    return None


class Refs(Target):
    """The ids one target handed out, in order, and the oracle on its answers."""

    def __init__(self) -> None:
        # Sessions move from "session" to "closed" when closed (kept for use after close).
        self.ids: dict[str, list[str]] = {k: [] for k in BOGUS}
        self.dims: dict[str, int] = {}  # d of each session opened
        self.owners: dict[str, int] = {}  # the key (index) that made each id
        self.named = ""  # the id the last path named

    def pick(self, kind: str, index: int) -> str:
        pool = self.ids[kind]
        return pool[index % len(pool)] if pool else BOGUS[kind]

    def dim(self, index: int) -> int:
        return self.dims.get(self.pick("session", index), 3)

    def path(self, req: Req) -> str:
        if req.ref is None:
            self.named = ""
            return req.path
        self.named = self.pick(*req.ref)
        return req.path.replace("{ref}", urllib.parse.quote(self.named, safe=""))

    def key(self, req: Req) -> int:
        return self.owners.get(self.named, 0) if req.key == OWNER else req.key

    def observe(self, req: Req, response: httpx.Response) -> str | None:
        verdict = judge(req, response)
        if response.status_code != 200 or verdict is not None:
            return verdict
        body = json.loads(response.content)
        if req.op == "store" and body["id"] not in self.ids["prompt"]:
            self.ids["prompt"].append(body["id"])
            self.owners[body["id"]] = req.key
        elif req.op == "open":
            self.owners[body["id"]] = req.key
            self.ids["session"].append(body["id"])
            self.dims[body["id"]] = int(body["projection"]["dim"])
        elif req.op == "delete" and body["id"] in self.ids["prompt"]:
            self.ids["prompt"].remove(body["id"])  # deleting twice is the delete rule's
        elif req.op == "close" and body["id"] in self.ids["session"]:
            self.ids["session"].remove(body["id"])
            self.ids["closed"].append(body["id"])
        elif req.op == "list" and body.get("next_cursor"):
            self.ids["cursor"].append(body["next_cursor"])
        return None


def targets() -> tuple[Target, Target]:
    """The live server's and the in-process app's :class:`Refs` (``Fuzzer(targets=)``)."""
    return Refs(), Refs()


# --------------------------------------------------------------------------- strategies

VERSIONS = st.sampled_from(["1.2", "1.2", "1.2", "1.2", "1.1", "1", None])
KEYS = st.integers(0, 2)
#: Mostly the key that made the id a request names; else any (another key's: a 404).
USERS = st.one_of(st.just(OWNER), KEYS)
INDEX = st.integers(0, 1 << 20)
#: Mostly one of the newest (``-1`` is the last id handed out), else any.
RECENT = st.one_of(st.integers(-4, -1), INDEX)
ODD_TEXT = st.sampled_from(
    [
        "\u202e\u200b\ufeff",
        "\U0001f600" * 60,
        "e\u0301\u0301\u0301",
        "\u0000nul",
        "\x7f\x1b[31m",
        "\U0010ffff",
        "\ufdd0\ufffe",
        "x" * 201,
        "",
    ]
)
LABELS = st.one_of(st.none(), st.text(max_size=20), ODD_TEXT, st.just("\ud800"))
#: Raw JSON text put where the recipe (or a number in it) goes.
RAW_RECIPES = st.sampled_from(
    [
        '{"note": "\\ud800"}',
        '{"\\udfff": 1}',
        '{"ok": "\\ud83d\\ude00"}',  # a valid surrogate pair: fine
        '{"n": NaN}',
        '{"n": -Infinity}',
        '{"n": 1e400}',
        '{"n": ' + HUGE_INT + "}",
        '{"n": -' + HUGE_INT[:4300] + "}",
        '{"a": ' * 16 + "1" + "}" * 16,
        '{"a": ' * 17 + "1" + "}" * 17,
        '{"a": [' * 200 + "1" + "]}" * 200,  # 400 levels
        "[" * 5000 + "]" * 5000,
        '{"s": "' + "x" * 5000 + '"}',
        '{"s": "' + "\\u00e9" * 3000 + '"}',
        "[]",
        '"not an object"',
        "null",
        "{}",
    ]
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
VALUES = st.one_of(
    st.just(0.0),
    st.floats(-2.0, 2.0, width=32),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e5, -1e30, 1e4]),
)


def _raw_body(fields: dict[str, Any], raw: dict[str, str]) -> bytes:
    """``fields`` as JSON with each ``raw`` name's value spliced in as text unchanged."""
    marked = {**fields, **{k: f"@@{k}@@" for k in raw}}
    text = json.dumps(marked, allow_nan=True)
    for k, v in raw.items():
        text = text.replace(json.dumps(f"@@{k}@@"), v)
    return text.encode()


def _headers(version: str | None, ctype: str | None = None) -> tuple[tuple[str, str], ...]:
    h = [] if version is None else [("x-bbt-protocol", version)]
    if ctype is not None:
        h.append(("content-type", ctype))
    return tuple(h)


class FuzzMachine(RuleBasedStateMachine):
    """Shared by both families: the target, the served model and one send."""

    fuzzer: ClassVar[Fuzzer]
    info: ClassVar[dict[str, Any]]
    family: ClassVar[str]

    @property
    def hidden(self) -> int:
        return int(self.info["hidden_size"])

    @property
    def mask(self) -> str:
        return str(self.info.get("mask_token") or "")

    def send(
        self,
        op: str,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        key: int = 0,
        version: str | None = "1.2",
        ref: tuple[str, int] | None = None,
        ctype: str | None = None,
    ) -> None:
        self.fuzzer.send(
            Req(
                self.family,
                method,
                path,
                body,
                headers=_headers(version, ctype),
                key=key,
                op=op,
                ref=ref,
            )
        )

    def texts(self) -> st.SearchStrategy[list[str]]:
        m = self.mask
        one = st.one_of(
            st.just(f"a good film . It was {m} ."),
            st.just("no mask"),
            st.just(f"{m} {m}"),
            ODD_TEXT.map(lambda t: f"{t} {m}"),
        )
        good = st.sampled_from([f"a good film . It was {m} .", f"{m} : dull"])
        return st.one_of(
            st.lists(good, min_size=1, max_size=3), st.lists(one, min_size=1, max_size=3)
        )

    def candidates(self) -> st.SearchStrategy[list[int]]:
        vocab = int(self.info["vocab_size"])
        ok = st.lists(st.integers(0, vocab - 1), min_size=1, max_size=3)
        return st.one_of(ok, st.lists(st.integers(-1, vocab + 1), min_size=1, max_size=3))

    def spec(self) -> st.SearchStrategy[dict[str, Any]]:
        """A projection recipe: mostly small and valid, sometimes huge or wrong."""
        h, std = self.hidden, float(self.info["embedding_std"])
        return st.fixed_dictionaries(
            {
                "seed": st.one_of(st.integers(0, 9), st.sampled_from([-1, 2**64])),
                "n_tokens": st.one_of(
                    st.integers(1, 8), st.sampled_from([0, -1, 128, 129, 10**6, 2**63])
                ),
                "hidden_size": st.sampled_from([h, h, h, h, h + 1, 0, 10**9]),
                "dim": st.one_of(st.integers(1, 300), st.sampled_from([0, -1, 5000, 10**9, 2**62])),
                "embedding_std": st.sampled_from([std, std, std, 0.0, 1e30, float("nan")]),
            },
            optional={
                "recipe": st.sampled_from(["bbt-projection/1", "bbt-projection/9", ""]),
                "distribution": st.sampled_from(["normal", "uniform", "cauchy"]),
                "alpha": st.sampled_from([1.0, 0.5, 0.0, -1.0, 1e300, float("nan")]),
                "sigma": st.sampled_from([1.0, 0.0, float("inf")]),
            },
        )

    def p0(self, n: int) -> st.SearchStrategy[dict[str, Any] | None]:
        h, vocab = self.hidden, int(self.info["vocab_size"])
        rows = max(0, min(n, 8))
        return st.one_of(
            st.none(),
            st.builds(
                lambda ids: {"token_ids": ids},
                st.lists(st.integers(-1, vocab + 1), min_size=rows, max_size=rows + 1),
            ),
            st.builds(lambda t: {"text": t}, st.one_of(st.text(max_size=20), ODD_TEXT)),
            st.builds(
                lambda w, v: {"tensor": _tensor(np.full((rows, w), v, np.float32))},
                st.sampled_from([h, h, h + 1]),
                VALUES,
            ),
            st.just({"token_ids": [1], "text": "both"}),
        )


# --------------------------------------------------------------------------- registry


class RegistryMachine(FuzzMachine):
    family = "registry"

    @rule(
        key=KEYS,
        version=VERSIONS,
        shape=st.sampled_from(["ok", "ok", "ok", "deep", "wide", "empty", "long", "flat"]),
        n=st.integers(1, 6),
        fill=VALUES,
        dtype=st.sampled_from(["float32", "float32", "float16"]),
        label=LABELS,
        recipe=st.one_of(
            st.none(),
            JSON_VALUES.map(lambda v: ("value", v)),
            RAW_RECIPES.map(lambda r: ("raw", r)),
        ),
    )
    def store(
        self,
        key: int,
        version: str | None,
        shape: str,
        n: int,
        fill: float,
        dtype: str,
        label: str | None,
        recipe: tuple[str, Any] | None,
    ) -> None:
        h = self.hidden
        dims = {
            "ok": (n, h),
            "deep": (int(self.info.get("num_layers", 1)), n, h),
            "wide": (n, h + 1),
            "empty": (0, h),
            "long": (int(self.info["limits"]["max_prompt_tokens"]) + 1, h),
            "flat": (n * h,),
        }[shape]
        with np.errstate(over="ignore"):  # 1e5 as float16 is inf: that is the point
            prompt = np.full(dims, fill, dtype=np.float32).astype(dtype)
        fields: dict[str, Any] = {"model": self.info["id"], "prompt": _tensor(prompt)}
        if label is not None:
            fields["label"] = label
        raw = {}
        if recipe is not None and recipe[0] == "raw":
            raw["recipe"] = recipe[1]  # one of RAW_RECIPES: spliced in as JSON text
        elif recipe is not None:
            fields["recipe"] = recipe[1]
        self.send("store", "POST", "/v1/prompts", _raw_body(fields, raw), key=key, version=version)

    @rule(
        key=KEYS,
        n=st.integers(1, 4),
        seed=st.integers(0, 1 << 30),
        label=st.one_of(st.none(), st.text(max_size=12)),
        recipe=st.one_of(st.none(), JSON_VALUES.filter(lambda v: isinstance(v, dict))),
    )
    def store_valid(
        self, key: int, n: int, seed: int, label: str | None, recipe: dict[str, Any] | None
    ) -> None:
        """A prompt the registry keeps: the state the other rules then work on."""
        prompt = np.random.default_rng(seed).normal(0, 0.05, (n, self.hidden)).astype("<f4")
        fields = {"model": self.info["id"], "prompt": _tensor(prompt), "label": label}
        if recipe is not None:
            fields["recipe"] = recipe
        self.send("store", "POST", "/v1/prompts", _dumps(fields), key=key)

    @rule(
        key=KEYS,
        version=VERSIONS,
        spec=st.data(),
        z_shape=st.sampled_from(["ok", "ok", "ok", "row", "short", "huge_value", "nan"]),
        recipe=st.one_of(st.none(), RAW_RECIPES),
    )
    def store_projection(
        self, key: int, version: str | None, spec: Any, z_shape: str, recipe: str | None
    ) -> None:
        projection = spec.draw(self.spec())
        d = projection["dim"] if 0 < projection["dim"] <= 300 else 3
        z = np.full({"row": (1, d), "short": (max(0, d - 1),)}.get(z_shape, (d,)), 0.1, "<f4")
        if z_shape == "huge_value":
            z[:] = 1e7
        elif z_shape == "nan":
            z[:] = np.nan
        fields: dict[str, Any] = {"model": self.info["id"], "projection": projection}
        fields["z"] = _tensor(z)
        p0 = spec.draw(self.p0(projection["n_tokens"]))
        if p0 is not None:
            fields["p0"] = p0
        raw = {} if recipe is None else {"recipe": recipe}
        self.send("store", "POST", "/v1/prompts", _raw_body(fields, raw), key=key, version=version)

    @rule(
        key=KEYS,
        version=VERSIONS,
        limit=st.one_of(
            st.none(),
            st.integers(-2, 25),
            st.sampled_from(["1000", "1001", HUGE_INT, "abc", "1.5", "", "1e3", " 3", "0x10"]),
        ),
        cursor=st.one_of(
            st.none(),
            st.just("REAL"),
            st.just("REAL"),
            st.sampled_from(["", "abc", "A" * 5000, "\u00e9", "../..", "=" * 8, BOGUS["cursor"]]),
            st.text(max_size=30),
        ),
        index=INDEX,
    )
    def list_page(
        self, key: int, version: str | None, limit: Any, cursor: str | None, index: int
    ) -> None:
        query = []
        if limit is not None:
            query.append("limit=" + urllib.parse.quote(str(limit), safe=""))
        ref = None
        if cursor == "REAL":
            query.append("cursor={ref}")
            ref = ("cursor", index)
        elif cursor is not None:
            query.append("cursor=" + urllib.parse.quote(cursor, safe=""))
        path = "/v1/prompts" + ("?" + "&".join(query) if query else "")
        self.send("list", "GET", path, key=key, version=version, ref=ref)

    @rule(key=KEYS, pages=st.integers(1, 2), limit=st.integers(1, 6))
    def walk(self, key: int, pages: int, limit: int) -> None:
        """A first page, then the newest cursor each target handed out, page after page."""
        self.send("list", "GET", f"/v1/prompts?limit={limit}", key=key)
        for _ in range(pages):
            path = f"/v1/prompts?limit={limit}&cursor={{ref}}"
            self.send("list", "GET", path, key=key, ref=("cursor", -1))

    def _item(self, bogus: str | None) -> tuple[str, bool]:
        return ("{ref}", True) if bogus is None else (urllib.parse.quote(bogus, safe=""), False)

    BOGUS_IDS = st.one_of(
        st.none(),
        st.none(),
        st.none(),
        st.sampled_from(["bp_", "x", "..", "bp_" + "A" * 5000, "bp_\u00e9" * 3, "bp_%00"]),
        st.text(min_size=1, max_size=20).map(lambda t: t.replace("/", "_")),
    )

    @rule(key=USERS, version=VERSIONS, index=RECENT, bogus=BOGUS_IDS)
    def get(self, key: int, version: str | None, index: int, bogus: str | None) -> None:
        item, real = self._item(bogus)
        ref = ("prompt", index) if real else None
        self.send("get", "GET", f"/v1/prompts/{item}", key=key, version=version, ref=ref)

    @rule(key=USERS, version=VERSIONS, index=RECENT, bogus=BOGUS_IDS, twice=st.booleans())
    def delete(
        self, key: int, version: str | None, index: int, bogus: str | None, twice: bool
    ) -> None:
        item, real = self._item(bogus)
        ref = ("prompt", index) if real else None
        for _ in range(1 + twice):
            path = f"/v1/prompts/{item}"
            self.send("delete", "DELETE", path, key=key, version=version, ref=ref)

    @rule(
        key=USERS,
        version=VERSIONS,
        index=RECENT,
        bogus=BOGUS_IDS,
        data=st.data(),
        extra=st.one_of(st.none(), st.just({"prompts": None}), st.just({"model": "other"})),
    )
    def score(
        self,
        key: int,
        version: str | None,
        index: int,
        bogus: str | None,
        data: Any,
        extra: dict[str, Any] | None,
    ) -> None:
        item, real = self._item(bogus)
        body = {
            "model": self.info["id"],
            "texts": data.draw(self.texts()),
            "candidate_ids": data.draw(self.candidates()),
            "output_dtype": data.draw(st.sampled_from(["float32", "float16", "int8"])),
            **(extra or {}),
        }
        path = f"/v1/prompts/{item}/logits"
        ref = ("prompt", index) if real else None
        self.send("score", "POST", path, _dumps(body), key=key, version=version, ref=ref)

    @rule(index=RECENT, texts=st.integers(1, 4), data=st.data())
    def score_valid(self, index: int, texts: int, data: Any) -> None:
        """A stored prompt scored by its own key: the path past every check."""
        body = {
            "model": self.info["id"],
            "texts": [f"a good film . It was {self.mask} ."] * texts,
            "candidate_ids": data.draw(self.candidates().filter(lambda c: min(c) >= 0)),
        }
        path = "/v1/prompts/{ref}/logits"
        self.send("score", "POST", path, _dumps(body), key=OWNER, ref=("prompt", index))


# --------------------------------------------------------------------------- sessions


class SessionsMachine(FuzzMachine):
    family = "sessions"

    def _open(self, key: int, version: str | None, spec: dict[str, Any], p0: Any) -> None:
        fields: dict[str, Any] = {"model": self.info["id"], "projection": spec}
        if p0 is not None:
            fields["p0"] = p0
        self.send("open", "POST", "/v1/sessions", _dumps(fields), key=key, version=version)

    @rule(key=KEYS, version=VERSIONS, data=st.data())
    def open(self, key: int, version: str | None, data: Any) -> None:
        spec = data.draw(self.spec())
        raw_n = data.draw(st.sampled_from([None, None, None, "n_tokens", "dim", "seed"]))
        if raw_n is not None:  # a 5,001-digit integer as JSON text
            fields = {"model": self.info["id"], "projection": {**spec, raw_n: 0}}
            text = _dumps(fields).replace(
                f'"{raw_n}": 0'.encode(), f'"{raw_n}": {HUGE_INT}'.encode()
            )
            self.send("open", "POST", "/v1/sessions", text, key=key, version=version)
            return
        self._open(key, version, spec, data.draw(self.p0(spec["n_tokens"])))

    @rule(key=KEYS, n=st.integers(1, 4), dim=st.integers(1, 50), seed=st.integers(0, 99))
    def open_valid(self, key: int, n: int, dim: int, seed: int) -> None:
        """A small session (at most 52 KB) the other rules then work on."""
        spec = {"seed": seed, "n_tokens": n, "hidden_size": self.hidden, "dim": dim,
                "embedding_std": float(self.info["embedding_std"])}  # fmt: skip
        self._open(key, "1.2", spec, None)

    @rule(key=KEYS, count=st.integers(2, 5), n=st.sampled_from([2, 4, 4, 8]))
    def open_burst(self, key: int, count: int, n: int) -> None:
        """Sessions of ~206 KB (n=4, d=200) until the key's slots, its quota or the
        server's session memory refuse one."""
        d = max(1, 800 // n)
        spec = {"seed": 7, "n_tokens": n, "hidden_size": self.hidden, "dim": d,
                "embedding_std": float(self.info["embedding_std"])}  # fmt: skip
        for _ in range(count):
            self._open(key, "1.2", spec, None)

    def _z(self, data: Any, d: int) -> tuple[bytes, str | None]:
        """A logits body for a session of dimension ``d``: mostly right, often not."""
        how = data.draw(
            st.sampled_from(
                ["ok", "ok", "ok", "frame", "frame", "wrong_d", "rank1", "rank3", "nonfinite",
                 "huge", "float16", "dtype", "huge_shape", "huge_dim_text", "short", "bad_b64",
                 "zero_p", "no_texts"]
            )
        )  # fmt: skip
        p = 0 if how == "zero_p" else data.draw(st.integers(1, 3))
        shape = {"wrong_d": (p, d + 1), "rank1": (d,), "rank3": (p, 1, d)}.get(how, (p, d))
        z = np.full(shape, data.draw(st.floats(-1.0, 1.0, width=32)), "<f4")
        if how == "nonfinite":
            z.flat[:1] = data.draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        elif how == "huge":
            z[:] = data.draw(st.sampled_from([1e6 + 1, 3e38, -1e7]))
        tensor = _tensor(z.astype("float16") if how == "float16" else z)
        if how == "dtype":
            tensor["dtype"] = data.draw(st.sampled_from(["int32", "float64", "bogus", ""]))
        elif how == "huge_shape":
            tensor["shape"] = [2**63, d]
        elif how == "short":
            tensor["data"] = tensor["data"][: len(tensor["data"]) // 2]
        elif how == "bad_b64":
            tensor["data"] = "!" + tensor["data"]
        fields = {
            "z": tensor,
            "texts": [] if how == "no_texts" else data.draw(self.texts()),
            "candidate_ids": data.draw(self.candidates()),
        }
        if how == "frame":
            return frame(fields, z), FRAME
        if how == "huge_dim_text":
            return _raw_body(fields, {"z": tensor_text(tensor, HUGE_INT)}), None
        return _dumps(fields), None

    @rule(key=USERS, version=VERSIONS, index=RECENT, data=st.data())
    def logits(self, key: int, version: str | None, index: int, data: Any) -> None:
        d = self.fuzzer.live_target.dim(index) if isinstance(self.fuzzer.live_target, Refs) else 3
        body, ctype = self._z(data, d)
        path = "/v1/sessions/{ref}/logits"
        ref = ("session", index)
        self.send("logits", "POST", path, body, key=key, version=version, ref=ref, ctype=ctype)

    @rule(index=RECENT, p=st.integers(1, 4), framed=st.booleans(), seed=st.integers(0, 99))
    def logits_valid(self, index: int, p: int, framed: bool, seed: int) -> None:
        """A session called by its own key with a right z: the path past every check."""
        refs = self.fuzzer.live_target
        d = refs.dim(index) if isinstance(refs, Refs) else 3
        z = np.random.default_rng(seed).normal(0, 1, (p, d)).astype("<f4")
        fields: dict[str, Any] = {
            "z": _tensor(z),
            "texts": [f"a good film . It was {self.mask} ."],
            "candidate_ids": [5, 6],
        }
        body, ctype = (frame(fields, z), FRAME) if framed else (_dumps(fields), None)
        path = "/v1/sessions/{ref}/logits"
        ref = ("session", index)
        self.send("logits", "POST", path, body, key=OWNER, ref=ref, ctype=ctype)

    @rule(key=USERS, index=RECENT, twice=st.booleans())
    def close(self, key: int, index: int, twice: bool) -> None:
        """Close one (its key's: a 200; another's: a 404), maybe twice (then a 404)."""
        for _ in range(1 + twice):
            self.send("close", "DELETE", "/v1/sessions/{ref}", key=key, ref=("session", index))

    @rule(key=USERS, index=RECENT, data=st.data())
    def use_after_close(self, key: int, index: int, data: Any) -> None:
        """A closed session: its logits and its close are 404s."""
        body, ctype = self._z(data, 3)
        path = "/v1/sessions/{ref}/logits"
        self.send("logits", "POST", path, body, key=key, ref=("closed", index), ctype=ctype)
        self.send("close", "DELETE", "/v1/sessions/{ref}", key=key, ref=("closed", index))

    @rule(
        key=KEYS,
        bogus=st.sampled_from([BOGUS["session"], "x", "A" * 5000, "..", "%00", "\u00e9", ""]),
    )
    def bogus_ids(self, key: int, bogus: str) -> None:
        quoted = urllib.parse.quote(bogus, safe="")
        self.send("close", "DELETE", f"/v1/sessions/{quoted}", key=key)
        self.send("logits", "POST", f"/v1/sessions/{quoted}/logits", b"{}", key=key)


def frame(fields: dict[str, Any], z: np.ndarray[Any, Any]) -> bytes:
    """A binary frame (docs/protocol.md, *Binary frames*): the header's z has no data;
    z's bytes follow it."""
    head = json.dumps({**fields, "z": {**fields["z"], "data": ""}}).encode()
    return struct.pack("<I", len(head)) + head + z.tobytes()


def tensor_text(tensor: dict[str, Any], number: str) -> str:
    """``tensor`` as JSON text with its first dimension written as ``number`` (raw digits)."""
    shape = ", ".join([number, *(str(s) for s in tensor["shape"][1:])])
    return json.dumps({**tensor, "shape": "@@"}).replace('"@@"', f"[{shape}]")


MACHINES: dict[str, type[FuzzMachine]] = {"registry": RegistryMachine, "sessions": SessionsMachine}


def run(fuzzer: Fuzzer, info: dict[str, Any], family: str, n: int, seed: int) -> None:
    """About ``n`` requests of ``family``: state-machine runs of up to :data:`STEPS` steps
    (a step sends one to three requests) until ``n`` were sent."""
    base = MACHINES[family]
    machine = type(base.__name__, (base,), {"fuzzer": fuzzer, "info": info})
    start = fuzzer.count
    round_no = 0
    while fuzzer.count - start < n:
        left = n - (fuzzer.count - start)
        # hypothesis.seed() for a state machine: run_state_machine_as_test reads this.
        machine._hypothesis_internal_use_seed = seed * 10_000 + round_no  # type: ignore[attr-defined]
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=max(1, math.ceil(left / (STEPS * 1.5))),
                stateful_step_count=STEPS,
                database=None,
                deadline=None,
                phases=[Phase.generate],
                verbosity=Verbosity.quiet,
                suppress_health_check=list(HealthCheck),
            ),
        )
        round_no += 1
