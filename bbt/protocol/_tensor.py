"""Binary tensors inside JSON: raw little-endian bytes, base64-encoded, with dtype and shape.

A JSON list of floats costs ~18 bytes per float32 and loses bits on round trips; base64 of
the raw bytes costs 4/3 of the binary size and is exact. Decoding is strict and checks the
byte count against the declared shape *before* allocating anything, so a hostile body can
neither crash a server nor make it allocate more than the body's own size.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

DType = Literal["float32", "float16"]
SUPPORTED_DTYPES: tuple[DType, ...] = ("float32", "float16")
MAX_RANK = 4

_NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
}


class TensorDecodeError(ValueError):
    """A tensor payload that does not match its declared dtype and shape."""


class Tensor(BaseModel):
    """A dense tensor on the wire.

    ``data`` holds ``prod(shape) * itemsize`` bytes in C order, little-endian, base64
    (standard alphabet, padded).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: DType = Field(description="Element type; little-endian IEEE 754.")
    shape: list[int] = Field(description="Dimensions, C order.", min_length=0, max_length=MAX_RANK)
    data: str = Field(description="Base64 of the raw little-endian bytes, C order.", repr=False)

    @field_validator("shape")
    @classmethod
    def _non_negative(cls, shape: list[int]) -> list[int]:
        if any(d < 0 for d in shape):
            raise ValueError("dimensions must be non-negative")
        return shape

    @property
    def nbytes(self) -> int:
        """Size of the decoded payload implied by ``shape`` and ``dtype``."""
        return math.prod(self.shape) * _NUMPY_DTYPES[self.dtype].itemsize

    @classmethod
    def from_numpy(cls, array: np.ndarray[Any, Any], dtype: DType | None = None) -> Tensor:
        """Encode ``array``, cast to ``dtype`` (default: float32, or float16 if it already is)."""
        if dtype is None:
            dtype = "float16" if array.dtype == np.float16 else "float32"
        if dtype not in _NUMPY_DTYPES:
            raise ValueError(f"unsupported dtype {dtype!r}; supported: {SUPPORTED_DTYPES}")
        target = _NUMPY_DTYPES[dtype]
        with np.errstate(over="ignore", invalid="ignore"):
            arr = np.asarray(array, dtype=target)
        if arr.dtype != array.dtype and not np.isfinite(arr).all() and np.isfinite(array).all():
            raise ValueError(f"values exceed the range of {dtype}; send them as float32")
        if not arr.flags.c_contiguous:  # ascontiguousarray would turn a 0-d array into 1-d
            arr = arr.copy(order="C")
        return cls(
            dtype=dtype,
            shape=list(arr.shape),
            data=base64.b64encode(arr.tobytes()).decode("ascii"),
        )

    def to_numpy(self) -> np.ndarray[Any, Any]:
        """Decode to a writable array of the declared dtype (native byte order).

        Raises :class:`TensorDecodeError` when the payload is not valid base64 or its
        length does not match ``shape`` and ``dtype``.
        """
        expected = self.nbytes
        # Check the encoded length first: cheap, and it bounds what decoding allocates.
        if len(self.data) != 4 * math.ceil(expected / 3):
            raise TensorDecodeError(
                f"data holds {len(self.data)} base64 characters; shape {self.shape} of "
                f"{self.dtype} needs {4 * math.ceil(expected / 3)}"
            )
        try:
            raw = base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise TensorDecodeError(f"data is not valid base64: {exc}") from None
        if len(raw) != expected:
            raise TensorDecodeError(
                f"data decodes to {len(raw)} bytes; shape {self.shape} of {self.dtype} "
                f"needs {expected}"
            )
        arr = np.frombuffer(raw, dtype=_NUMPY_DTYPES[self.dtype]).reshape(self.shape)
        return arr.astype(arr.dtype.newbyteorder("="), copy=True)


def encoded_size(shape: tuple[int, ...] | list[int], dtype: DType) -> int:
    """Characters of base64 that a tensor of this shape and dtype takes on the wire."""
    return 4 * math.ceil(math.prod(shape) * _NUMPY_DTYPES[dtype].itemsize / 3)
