"""An explicit, pickle-free codec for optimiser state: JSON plus NumPy arrays.

pycma's strategy is a graph of Python objects (dicts, lists, arrays, pycma classes, a
``RandomState``) that only knows how to pickle. :func:`encode` walks that graph the way
:mod:`pickle` does (the same ``__reduce_ex__`` calls, the same memo of shared objects, items
set before state as in pickle's BUILD), and writes it as a JSON tree whose arrays go into a
separate ``{name: ndarray}`` mapping (saved as ``.npz`` without pickles). :func:`decode`
rebuilds it the way pickle would (``cls.__new__`` + ``__setstate__`` or the ``__dict__``),
so ``decode(*encode(x))`` is the object ``pickle.loads(pickle.dumps(x))`` would be; the
optimisers continue from such a copy after every ``tell`` so that an uninterrupted run and a
resumed one run identical code on identical state.

What makes it safe where pickle is not: a tree names the callables it needs, and
:func:`decode` resolves them only from an allow-list (classes and functions defined in
pycma's modules, a few NumPy and standard-library constructors, bbt's own TPA class, and
whatever an optimiser adds with :func:`allow`). Anything else is refused with
:class:`CodecError`; no name is imported outside the pycma package, and no attribute whose
name starts with ``_`` is reached through ``getattr``.
"""

from __future__ import annotations

import base64
import copyreg
import importlib
import types
from collections.abc import Callable
from typing import Any

import numpy as np

#: The tree format; :func:`decode` refuses other versions.
VERSION = 1

_ATOMS = (type(None), bool, int, str)
#: Callables (``module:qualname``) a tree may name besides pycma's own (see :func:`allow`).
_ALLOWED: dict[str, Callable[[], Any]] = {}
#: Packages whose classes and functions a tree may name (pycma's).
_ALLOWED_PACKAGES = ("cma",)


class CodecError(ValueError):
    """A state tree that cannot be encoded or decoded (unknown type, refused name, damage)."""


def allow(name: str, resolve: Callable[[], Any]) -> None:
    """Let trees name ``name`` (``module:qualname``), resolved lazily by ``resolve()``.

    An optimiser whose state holds objects of its own classes registers them here; a
    decoder never imports a name that is not allowed.
    """
    _ALLOWED[name] = resolve


def _builtin(obj: Any) -> Callable[[], Any]:
    return lambda: obj


# What pickle's protocols 2+ build plain instances with (untyped in typeshed: getattr).
_NEWOBJ: Any = getattr(copyreg, "__newobj__")  # noqa: B009
for _obj in (getattr, object, dict, list, set, tuple, complex, range, slice):
    allow(f"{_obj.__module__}:{_obj.__qualname__}", _builtin(_obj))
for _name in ("__newobj__", "__newobj_ex__", "_reconstructor"):
    allow(f"copyreg:{_name}", _builtin(getattr(copyreg, _name)))


def _allow_numpy() -> None:
    """NumPy's RandomState / bit-generator constructors (what a RandomState pickles as)."""
    from numpy.random import _pickle as npr

    for name in ("__randomstate_ctor", "__bit_generator_ctor", "__generator_ctor"):
        fn = getattr(npr, name, None)
        if fn is not None:
            allow(f"{fn.__module__}:{fn.__qualname__}", _builtin(fn))
    for cls in (np.random.RandomState, np.random.MT19937):
        allow(f"{cls.__module__}:{cls.__qualname__}", _builtin(cls))
    # pycma's default eigen-decomposition (its option CMA_eigenmethod holds the function).
    allow("numpy.linalg:eigh", _builtin(np.linalg.eigh))


_allow_numpy()


def global_name(obj: Any) -> str:
    """The ``module:qualname`` under which a class or function is written (as pickle does)."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        raise CodecError(f"{obj!r} has no importable name")
    return f"{module}:{qualname}"


def _resolve(name: str) -> Any:
    if name in _ALLOWED:
        return _ALLOWED[name]()
    module, _, qualname = name.partition(":")
    if module.split(".")[0] not in _ALLOWED_PACKAGES or not qualname:
        raise CodecError(f"the state names {name!r}, which is not allowed")
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        raise CodecError(f"the state names {name!r}, which this pycma does not have") from None
    if not (isinstance(obj, type) or callable(obj)) or getattr(obj, "__module__", "") != module:
        raise CodecError(f"the state names {name!r}, which is not a pycma class or function")
    return obj


# --------------------------------------------------------------------------- encode


class _Encoder:
    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray[Any, Any]] = {}
        self.memo: dict[int, int] = {}
        # Every memoised object stays referenced, as in pickle's memo: a temporary (a state
        # dict from __getstate__) freed early could hand its id to another object.
        self.keep: list[Any] = []

    def _memo(self, obj: Any) -> int:
        n = len(self.keep)
        self.memo[id(obj)] = n
        self.keep.append(obj)
        return n

    def enc(self, obj: Any) -> Any:
        t = type(obj)
        if t in _ATOMS:
            return obj
        if t is float:
            return {"t": "float", "v": obj.hex()}
        if t is bytes:
            return {"t": "bytes", "v": base64.b64encode(obj).decode("ascii")}
        ref = self.memo.get(id(obj))
        if ref is not None:
            return {"t": "ref", "id": ref}
        if t is np.ndarray:
            return self._array(obj)
        if isinstance(obj, np.generic):
            return self._scalar(obj)
        if t is np.dtype or isinstance(obj, np.dtype):
            return self._dtype(obj)
        if t is list:
            node: dict[str, Any] = {"t": "list", "id": self._memo(obj)}
            node["v"] = [self.enc(v) for v in obj]
            return node
        if t is dict:
            node = {"t": "dict", "id": self._memo(obj)}
            node["v"] = [[self.enc(k), self.enc(v)] for k, v in obj.items()]
            return node
        if t in (tuple, set, frozenset):
            items = [self.enc(v) for v in obj]
            if id(obj) in self.memo:  # reached again through its own items
                return {"t": "ref", "id": self.memo[id(obj)]}
            return {"t": t.__name__, "id": self._memo(obj), "v": items}
        if t is bytearray:
            data = base64.b64encode(bytes(obj)).decode("ascii")
            return {"t": "bytearray", "id": self._memo(obj), "v": data}
        if t.__name__ == "builtin_function_or_method" and not isinstance(
            getattr(obj, "__self__", None), (type(None), types.ModuleType)
        ):
            # A C method bound to an object (NumPy < 2 builds RandomState.randn so; 2.x as a
            # "method"): pickle reduces it to getattr(obj, name), and so does this.
            return self._reduce(obj)
        if isinstance(obj, type) or t.__name__ in ("function", "builtin_function_or_method"):
            return {"t": "global", "v": global_name(obj)}
        return self._reduce(obj)

    def _array(self, arr: np.ndarray[Any, Any]) -> dict[str, Any]:
        if arr.dtype.hasobject or arr.dtype.fields is not None:
            raise CodecError(f"an array of dtype {arr.dtype} cannot be stored without pickle")
        name = f"a{len(self.arrays)}"
        self.arrays[name] = arr
        return {"t": "nd", "id": self._memo(arr), "v": name}

    def _scalar(self, value: np.generic) -> dict[str, Any]:
        dt = value.dtype
        if dt.hasobject or dt.fields is not None:
            raise CodecError(f"a NumPy scalar of dtype {dt} cannot be stored without pickle")
        raw = base64.b64encode(value.tobytes()).decode("ascii")
        return {"t": "npscalar", "dt": dt.str, "v": raw}

    def _dtype(self, dt: Any) -> dict[str, Any]:
        if dt.hasobject or dt.fields is not None:
            raise CodecError(f"dtype {dt} cannot be stored without pickle")
        return {"t": "dtype", "v": dt.str}

    def _reduce(self, obj: Any) -> dict[str, Any]:
        # pickle's own order: the copyreg dispatch table, then __reduce_ex__.
        reducer = copyreg.dispatch_table.get(type(obj))
        rv = reducer(obj) if reducer is not None else obj.__reduce_ex__(4)
        if isinstance(rv, str):  # a module-level singleton, written by name
            module = getattr(obj, "__module__", None) or type(obj).__module__
            return {"t": "global", "v": f"{module}:{rv}"}
        if not isinstance(rv, tuple) or not 2 <= len(rv) <= 6:
            raise CodecError(f"{type(obj).__qualname__} reduces to something pickle would refuse")
        func, args, state, listitems, dictitems = (*rv, None, None, None)[:5]
        node: dict[str, Any] = {"t": "obj", "f": self.enc(func)}
        node["a"] = [self.enc(a) for a in args]
        node["id"] = self._memo(obj)
        if listitems is not None:
            node["l"] = [self.enc(v) for v in listitems]
        if dictitems is not None:
            node["d"] = [[self.enc(k), self.enc(v)] for k, v in dictitems]
        if state is not None:
            node["s"] = self.enc(state)
        return node


def encode(obj: Any) -> tuple[dict[str, Any], dict[str, np.ndarray[Any, Any]]]:
    """``obj`` as (a JSON-able tree, its arrays by name); see the module docstring."""
    enc = _Encoder()
    tree = {"codec": VERSION, "root": enc.enc(obj)}
    return tree, enc.arrays


# --------------------------------------------------------------------------- decode


def _build(inst: Any, state: Any) -> None:
    """pickle's BUILD: ``__setstate__``, else the instance dict (and slots)."""
    setstate = getattr(inst, "__setstate__", None)
    if setstate is not None:
        setstate(state)
        return
    slotstate = None
    if isinstance(state, tuple) and len(state) == 2:
        state, slotstate = state
    if state:
        inst.__dict__.update(state)
    if slotstate:
        for k, v in slotstate.items():
            setattr(inst, k, v)


class _Decoder:
    def __init__(self, arrays: dict[str, np.ndarray[Any, Any]]) -> None:
        self.arrays = arrays
        self.memo: dict[int, Any] = {}

    def dec(self, node: Any) -> Any:
        if node is None or isinstance(node, bool | int | str):
            return node
        if not isinstance(node, dict):
            raise CodecError("damaged state tree")
        t = node.get("t")
        handler = getattr(self, f"_dec_{t}", None)
        if not isinstance(t, str) or handler is None:
            raise CodecError(f"unknown node {t!r} in the state tree")
        return handler(node)

    def _put(self, node: dict[str, Any], obj: Any) -> Any:
        self.memo[int(node["id"])] = obj
        return obj

    def _dec_float(self, node: dict[str, Any]) -> float:
        return float.fromhex(node["v"])

    def _dec_bytes(self, node: dict[str, Any]) -> bytes:
        return base64.b64decode(node["v"])

    def _dec_bytearray(self, node: dict[str, Any]) -> bytearray:
        return self._put(node, bytearray(base64.b64decode(node["v"])))  # type: ignore[no-any-return]

    def _dec_ref(self, node: dict[str, Any]) -> Any:
        try:
            return self.memo[int(node["id"])]
        except KeyError:
            raise CodecError("the state tree refers to an object before it is built") from None

    def _dec_nd(self, node: dict[str, Any]) -> np.ndarray[Any, Any]:
        try:
            stored = self.arrays[node["v"]]
        except KeyError:
            raise CodecError(f"the state's array {node['v']!r} is missing") from None
        # A private, writable, aligned copy, C-ordered unless only Fortran-contiguous: what
        # pickle gives (and np.save keeps the Fortran flag).
        fortran = stored.flags.f_contiguous and not stored.flags.c_contiguous
        arr: np.ndarray[Any, Any] = np.array(stored, copy=True, order="F" if fortran else "C")
        return self._put(node, arr)  # type: ignore[no-any-return]

    def _dec_npscalar(self, node: dict[str, Any]) -> Any:
        dt = np.dtype(node["dt"])
        if dt.hasobject:
            raise CodecError("object scalars are refused")
        return np.frombuffer(base64.b64decode(node["v"]), dtype=dt)[0]

    def _dec_dtype(self, node: dict[str, Any]) -> np.dtype[Any]:
        dt: np.dtype[Any] = np.dtype(node["v"])
        if dt.hasobject:
            raise CodecError("object dtypes are refused")
        return dt

    def _dec_list(self, node: dict[str, Any]) -> list[Any]:
        out: list[Any] = self._put(node, [])
        out.extend(self.dec(v) for v in node["v"])
        return out

    def _dec_dict(self, node: dict[str, Any]) -> dict[Any, Any]:
        out: dict[Any, Any] = self._put(node, {})
        for k, v in node["v"]:
            out[self.dec(k)] = self.dec(v)
        return out

    def _dec_tuple(self, node: dict[str, Any]) -> tuple[Any, ...]:
        return self._put(node, tuple(self.dec(v) for v in node["v"]))  # type: ignore[no-any-return]

    def _dec_set(self, node: dict[str, Any]) -> set[Any]:
        return self._put(node, {self.dec(v) for v in node["v"]})  # type: ignore[no-any-return]

    def _dec_frozenset(self, node: dict[str, Any]) -> frozenset[Any]:
        return self._put(node, frozenset(self.dec(v) for v in node["v"]))  # type: ignore[no-any-return]

    def _dec_global(self, node: dict[str, Any]) -> Any:
        return _resolve(str(node["v"]))

    def _dec_obj(self, node: dict[str, Any]) -> Any:
        # Only the explicit allow-list is ever called: pycma's classes and functions may be
        # values (built with __new__, never __init__), not callables of the tree.
        f = node["f"]
        name = f.get("v") if isinstance(f, dict) and f.get("t") == "global" else None
        if name not in _ALLOWED:
            raise CodecError(f"the state tree calls {name or 'an object'!r}, which is not allowed")
        func = _ALLOWED[str(name)]()
        args = [self.dec(a) for a in node["a"]]
        if func is getattr and not (
            len(args) == 2
            and isinstance(args[0], np.random.RandomState)
            and isinstance(args[1], str)
            and not args[1].startswith("_")
        ):
            # Pickle writes a bound method as getattr(obj, name): here only RandomState's
            # public samplers (pycma's randn option).
            raise CodecError("the state tree asks for a private attribute or a foreign method")
        if func is _NEWOBJ and not isinstance(args[0] if args else None, type):
            raise CodecError("the state tree builds an instance of a non-class")
        obj = self._put(node, func(*args))
        if "l" in node:
            items = [self.dec(v) for v in node["l"]]
            extend = getattr(obj, "extend", None)
            if extend is not None:
                extend(items)
            else:
                for v in items:
                    obj.append(v)
        for k, v in node.get("d", ()):
            obj[self.dec(k)] = self.dec(v)
        if "s" in node:
            _build(obj, self.dec(node["s"]))
        return obj


def decode(tree: dict[str, Any], arrays: dict[str, np.ndarray[Any, Any]]) -> Any:
    """The object :func:`encode` wrote (see the module docstring); :class:`CodecError` for a
    tree that names anything outside the allow-list or is damaged."""
    if not isinstance(tree, dict) or tree.get("codec") != VERSION:
        raise CodecError(
            f"unsupported state codec {tree.get('codec') if isinstance(tree, dict) else tree!r}"
        )
    try:
        return _Decoder(arrays).dec(tree["root"])
    except CodecError:
        raise
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CodecError(f"damaged state tree: {exc}") from None
