"""A binary request body: a JSON header and one raw tensor, without base64.

Protocol 1.1 accepts it for session logits (``Content-Type: application/vnd.bbt.frame``)::

    uint32 little-endian   L, the header's length in bytes
    L bytes                the request as JSON (UTF-8), the tensor's "data" left empty ("")
    the rest               the tensor's raw bytes: little-endian, C order, exactly
                           prod(shape) * itemsize of them

Base64 inflates a tensor by a third; at d = 500 that is the difference between 2,667 and
2,000 bytes per candidate. The payload's length is checked against the header's shape
before anything is allocated, as for a base64 tensor.
"""

from __future__ import annotations

import struct
from typing import TypeVar

from pydantic import BaseModel

from bbt.protocol.validate import ProtocolViolation

FRAME_CONTENT_TYPE = "application/vnd.bbt.frame"
_LENGTH = struct.Struct("<I")

M = TypeVar("M", bound=BaseModel)


def encode_frame(header: BaseModel, payload: bytes) -> bytes:
    head = header.model_dump_json().encode()
    return _LENGTH.pack(len(head)) + head + payload


def split_frame(body: bytes) -> tuple[bytes, bytes]:
    """(header JSON, payload) of a frame; ProtocolViolation when it is not one."""
    if len(body) < _LENGTH.size:
        raise ProtocolViolation("frame body is shorter than its 4-byte header length")
    (length,) = _LENGTH.unpack_from(body)
    if length > len(body) - _LENGTH.size:
        raise ProtocolViolation(
            f"frame header claims {length} bytes; the body holds {len(body) - _LENGTH.size}"
        )
    start = _LENGTH.size
    return body[start : start + length], body[start + length :]


def is_frame(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == FRAME_CONTENT_TYPE
