from __future__ import annotations

import base64

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bbt.protocol import Tensor, TensorDecodeError, encoded_size


@given(
    hnp.arrays(
        dtype=st.sampled_from([np.float32, np.float16]),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    )
)
def test_round_trip_is_bit_exact(arr: np.ndarray) -> None:
    t = Tensor.from_numpy(arr)
    back = t.to_numpy()
    assert back.dtype == arr.dtype
    assert back.shape == arr.shape
    # Compare bytes, not values: NaN payloads and signed zeros must survive too.
    assert back.tobytes() == np.ascontiguousarray(arr).tobytes()
    assert len(t.data) == encoded_size(arr.shape, t.dtype)


def test_bytes_are_little_endian_c_order() -> None:
    arr = np.arange(6, dtype=">f4").reshape(2, 3).T  # big-endian and not C-contiguous
    t = Tensor.from_numpy(arr)
    raw = base64.b64decode(t.data)
    assert raw == np.ascontiguousarray(arr, dtype="<f4").tobytes()
    assert t.shape == [3, 2]


def test_float64_input_is_cast_to_float32_by_default() -> None:
    t = Tensor.from_numpy(np.ones((2, 2), dtype=np.float64))
    assert t.dtype == "float32"
    assert t.to_numpy().dtype == np.float32


def test_float16_overflow_is_refused_not_sent_as_inf() -> None:
    with pytest.raises(ValueError, match="exceed the range of float16"):
        Tensor.from_numpy(np.full(3, 1e5, dtype=np.float32), dtype="float16")


def test_decoded_array_is_writable() -> None:
    back = Tensor.from_numpy(np.zeros(3, dtype=np.float32)).to_numpy()
    back[0] = 1.0
    assert back[0] == 1.0


@pytest.mark.parametrize(
    ("shape", "data", "match"),
    [
        ([2], base64.b64encode(b"\0" * 4).decode(), "base64 characters"),
        ([1_000_000_000, 1_000_000], "AAAA", "base64 characters"),
        ([1], "!!!!!!!!", "not valid base64"),
        ([2], "AAAAAAA!AAA=", "not valid base64"),
    ],
)
def test_mismatched_payload_is_rejected(shape: list[int], data: str, match: str) -> None:
    with pytest.raises(TensorDecodeError, match=match):
        Tensor(dtype="float32", shape=shape, data=data).to_numpy()


def test_negative_dimensions_fail_validation() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        Tensor(dtype="float32", shape=[-1], data="")


def test_rank_above_four_fails_validation() -> None:
    with pytest.raises(ValueError, match="at most 4"):
        Tensor(dtype="float32", shape=[1, 1, 1, 1, 1], data="AAAAAA==")


def test_repr_hides_the_payload() -> None:
    t = Tensor.from_numpy(np.ones(1000, dtype=np.float32))
    assert t.data not in repr(t)
