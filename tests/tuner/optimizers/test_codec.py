"""The state codec: pycma's strategy as JSON + arrays, rebuilt as pickle would rebuild it,
and nothing outside the allow-list is ever called."""

from __future__ import annotations

import json
import pickle
from typing import Any

import numpy as np
import pytest

from bbt.tuner.optimizers import CMAOptimizer, codec
from bbt.tuner.optimizers.cma import pycma_context


def _same_graph(a: Any, b: Any) -> None:
    """Two object graphs are the same: same tree (types, values, sharing), same arrays."""
    ta, aa = codec.encode(a)
    tb, ab = codec.encode(b)
    assert json.dumps(ta) == json.dumps(tb)
    assert aa.keys() == ab.keys()
    for k in aa:
        x, y = aa[k], ab[k]
        assert (x.dtype, x.shape, x.tobytes()) == (y.dtype, y.shape, y.tobytes())
        assert (x.flags.c_contiguous, x.flags.f_contiguous) == (
            y.flags.c_contiguous,
            y.flags.f_contiguous,
        )


@pytest.mark.parametrize(("dim", "bound"), [(10, None), (12, 1.5), (320, None)])
def test_decoding_rebuilds_what_a_pickle_round_trip_rebuilds(dim: int, bound: float | None) -> None:
    opt = CMAOptimizer(dim, 6, 1.0, seed=4, bound=bound)
    for _ in range(3):
        pop = opt.ask()
        opt.tell((pop**2).sum(axis=1))
    with pycma_context():
        via_pickle = pickle.loads(pickle.dumps(opt.es, protocol=pickle.HIGHEST_PROTOCOL))
        tree, arrays = codec.encode(opt.es)
        via_codec = codec.decode(json.loads(json.dumps(tree)), arrays)
        _same_graph(via_pickle, via_codec)


def test_shared_objects_stay_shared_and_cycles_close() -> None:
    arr = np.arange(4.0)
    inner: list[Any] = [arr]
    obj: dict[str, Any] = {"a": inner, "b": inner, "arr": arr, "t": (1, 2.5, None), "x": -0.0}
    obj["self"] = obj
    out = codec.decode(*codec.encode(obj))
    assert out["a"] is out["b"]
    assert out["a"][0] is out["arr"]
    assert out["self"] is out
    assert out["t"] == (1, 2.5, None)
    assert str(out["x"]) == "-0.0"
    assert out["arr"] is not arr


class _NotAllowed:
    pass


def test_a_class_outside_the_allow_list_is_refused() -> None:
    tree, arrays = codec.encode({"x": _NotAllowed()})
    with pytest.raises(codec.CodecError, match="not allowed"):
        codec.decode(tree, arrays)  # (its module is not pycma's)


@pytest.mark.parametrize(
    "name", ["os:system", "builtins:eval", "subprocess:run", "cma:__builtins__", "cmaevil:x"]
)
def test_a_tree_naming_anything_else_is_refused(name: str) -> None:
    tree = {
        "codec": codec.VERSION,
        "root": {"t": "obj", "id": 0, "f": {"t": "global", "v": name}, "a": ["echo pwned"]},
    }
    with pytest.raises(codec.CodecError):
        codec.decode(tree, {})


def test_private_attributes_are_never_reached() -> None:
    tree = {
        "codec": codec.VERSION,
        "root": {
            "t": "obj",
            "id": 0,
            "f": {"t": "global", "v": "builtins:getattr"},
            "a": [{"t": "list", "id": 1, "v": []}, "__class__"],
        },
    }
    with pytest.raises(codec.CodecError, match="private attribute"):
        codec.decode(tree, {})
    tree["root"]["a"][1] = "copy"  # public, but not a RandomState's
    with pytest.raises(codec.CodecError, match="foreign method"):
        codec.decode(tree, {})


def test_pycma_functions_are_values_never_callables_of_the_tree() -> None:
    tree = {
        "codec": codec.VERSION,
        "root": {"t": "obj", "id": 0, "f": {"t": "global", "v": "cma:fmin"}, "a": []},
    }
    with pytest.raises(codec.CodecError, match="not allowed"):
        codec.decode(tree, {})


def test_a_damaged_tree_is_a_codec_error() -> None:
    with pytest.raises(codec.CodecError, match="unsupported state codec"):
        codec.decode({"codec": 99, "root": None}, {})
    with pytest.raises(codec.CodecError, match="missing"):
        codec.decode({"codec": codec.VERSION, "root": {"t": "nd", "id": 0, "v": "a9"}}, {})
    with pytest.raises(codec.CodecError, match="before it is built"):
        codec.decode({"codec": codec.VERSION, "root": {"t": "ref", "id": 5}}, {})


def test_a_c_method_bound_to_an_object_is_written_as_pickle_writes_it() -> None:
    """NumPy < 2 builds ``RandomState.randn`` (pycma's ``randn`` option) as a C method bound
    to its RandomState, with no importable name of its own; pickle writes it as
    ``getattr(obj, name)``, and so must the codec (the lowest-bounds install found this)."""
    bound = {"k": 1}.get  # a builtin_function_or_method bound to an object, on any NumPy
    assert type(bound).__name__ == "builtin_function_or_method"
    tree, arrays = codec.encode({"m": bound})
    assert "getattr" in json.dumps(tree)
    # ...and only RandomState's public samplers may come back through getattr.
    with pytest.raises(codec.CodecError):
        codec.decode(tree, arrays)


def test_a_randomstate_sampler_round_trips() -> None:
    rs = np.random.RandomState(3)
    tree, arrays = codec.encode({"randn": rs.randn})
    again = codec.decode(tree, arrays)["randn"]
    assert np.array_equal(again(4), np.random.RandomState(3).randn(4))
