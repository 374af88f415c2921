"""Version negotiation: answer every client in the protocol version it announced.

Response models are closed (``extra="forbid"``), so a v1 client rejects any field it does
not know. Every response field added after v1 is therefore declared with
``json_schema_extra={"since": "<version>"}`` and has a default; :func:`wire_json` leaves
such fields out of an answer to an older client, generically, at any depth. The server
serialises every response through it, so a new field needs no code of its own to stay
invisible to old clients.
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any, get_args

from pydantic import BaseModel

from bbt.protocol._models import (
    PROTOCOL_V1,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    V1_ERROR_TYPES,
    ErrorBody,
    ModelInfo,
)


def _key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (0,)


def negotiate(announced: str | None) -> str:
    """The version to answer a client that sent ``X-BBT-Protocol: announced`` with.

    No header, "1" or anything unreadable gets v1 (what every server answered before 1.1);
    a newer minor version than ours (a future client) gets ours.
    """
    if announced is None:
        return PROTOCOL_V1
    wanted = _key(announced.strip())
    best = PROTOCOL_V1
    for version in SUPPORTED_VERSIONS:
        if _key(version) <= wanted:
            best = version
    return best


def speaks(version: str | None) -> bool:
    """Whether a response in ``version`` is readable by this package: the same major
    version; a missing header (some proxies strip it) is taken as v1."""
    if version is None:
        return True
    return version.strip().split(".")[0] == PROTOCOL_VERSION.split(".")[0]


def is_at_least(version: str, since: str) -> bool:
    return _key(version) >= _key(since)


#: Capabilities newer than the ``capabilities`` field itself, by the version that added
#: them: a client older than that is not told of them (it could not use them).
CAPABILITY_SINCE: dict[str, str] = {
    "features": "1.3",
    "shared_prompts": "1.4",
    "deep_sessions": "1.5",
    "score": "1.6",
}


def _capabilities(names: list[str], version: str) -> list[str]:
    return [c for c in names if is_at_least(version, CAPABILITY_SINCE.get(c, PROTOCOL_V1))]


def _since(model: type[BaseModel], name: str) -> str | None:
    extra = model.model_fields[name].json_schema_extra
    if isinstance(extra, dict):
        since = extra.get("since")
        if isinstance(since, str):
            return since
    return None


def _downgrade(value: Any, dumped: Any, version: str) -> Any:
    """``dumped`` (``value`` as JSON data) with fields newer than ``version`` removed."""
    if isinstance(value, BaseModel):
        assert isinstance(dumped, dict)
        cls = type(value)
        out: dict[str, Any] = {}
        for name in cls.model_fields:
            key = cls.model_fields[name].alias or name
            if key not in dumped:
                continue
            since = _since(cls, name)
            if since is not None and not is_at_least(version, since):
                continue
            if name == "protocol_version":
                out[key] = version  # discovery reports the version this answer speaks
                continue
            if name == "capabilities" and isinstance(value, ModelInfo):
                out[key] = _capabilities(dumped[key], version)
                continue
            out[key] = _downgrade(getattr(value, name), dumped[key], version)
        if isinstance(value, ErrorBody) and version == PROTOCOL_V1:
            older = V1_ERROR_TYPES.get(value.type)
            if older is not None:
                out["type"] = older.value
        return out
    if isinstance(value, list | tuple):
        return [_downgrade(v, d, version) for v, d in zip(value, dumped, strict=True)]
    if isinstance(value, dict):
        return {k: _downgrade(value[k], dumped[k], version) for k in dumped}
    return dumped


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


@cache
def _needs_walk(cls: type[BaseModel], version: str) -> bool:
    """Whether ``cls`` (at any depth) has a field newer than ``version`` to leave out or a
    ``protocol_version`` to fill in; if not, pydantic's own serialiser is the answer."""
    if cls is ErrorBody and version == PROTOCOL_V1:
        return True  # its type may be one a v1 client does not know
    for name, info in cls.model_fields.items():
        since = _since(cls, name)
        if name == "protocol_version" or (since is not None and not is_at_least(version, since)):
            return True
        if cls is ModelInfo and name == "capabilities" and version != PROTOCOL_VERSION:
            return True
        if any(_needs_walk(m, version) for m in _models_in(info.annotation)):
            return True
    return False


def wire_json(model: BaseModel, version: str = PROTOCOL_VERSION) -> bytes:
    """``model`` as the JSON body of an answer in protocol ``version``.

    Fields newer than ``version`` are left out, and every ``protocol_version`` field says
    ``version``: a discovery answer states the version the client is being spoken to in.
    """
    if not _needs_walk(type(model), version):
        return model.model_dump_json().encode()
    data = _downgrade(model, model.model_dump(mode="json"), version)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
