"""The registry of tuning methods: which names ``--method`` / ``TuneConfig.method`` take.

The names live in :data:`bbt.tuner.config.METHOD_NAMES`, which :class:`TuneConfig` checks
without importing any tuner; this module keeps that list and the method objects. The
built-in methods are registered by where they live and imported on first use; a third party
registers an instance with :func:`register`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from bbt.errors import ConfigurationError
from bbt.tuner.config import METHOD_NAMES, METHODS

if TYPE_CHECKING:
    from bbt.tuner.methods.base import Method

#: Built-in methods, by name: "module:attribute" of their instance, imported on first use.
_BUILTIN: dict[str, str] = {
    "bbt": "bbt.tuner.methods.shallow:BBT",
    "bbtv2": "bbt.tuner.methods.deep:BBTV2",
    "probe": "bbt.tuner.methods.probe:PROBE",
    "probe-tuned": "bbt.tuner.methods.probe:PROBE_TUNED",
    "mixture": "bbt.tuner.methods.mixture:MIXTURE",
}
_loaded: dict[str, Method] = {}
_order = METHOD_NAMES  # one list: what TuneConfig accepts is what is registered
assert tuple(_BUILTIN) == METHODS


def register(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` under ``method.name``; a name already taken raises unless ``replace``."""
    name = method.name
    if name in _order and not replace:
        raise ConfigurationError(f"a tuning method named {name!r} is already registered")
    if name not in _order:
        _order.append(name)
    _loaded[name] = method
    return method


def unregister(name: str) -> None:
    """Remove a method added with :func:`register` (the built-in ones stay)."""
    if name in _BUILTIN:
        raise ConfigurationError(f"{name!r} is a built-in tuning method")
    _loaded.pop(name, None)
    if name in _order:
        _order.remove(name)


def available() -> tuple[str, ...]:
    """The registered method names, built-in ones first, in registration order."""
    return tuple(_order)


def get(name: str) -> Method:
    """The method called ``name``; :class:`ConfigurationError` naming the known ones."""
    method = _loaded.get(name)
    if method is not None:
        return method
    if name not in _BUILTIN:
        raise ConfigurationError(
            f"unknown tuning method {name!r}; available: {', '.join(available())}"
        )
    module, attr = _BUILTIN[name].split(":")
    loaded: Method = getattr(importlib.import_module(module), attr)
    _loaded[name] = loaded
    return loaded
