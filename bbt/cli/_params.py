"""Options as data: a config object built from a command's parsed options.

Where a command's parameter names are the config's field names, :func:`from_params` takes them
from ``ctx.params`` (what click parsed, before typer calls the command) instead of copying
each one by hand; the caller passes explicitly only what differs: a field whose option has
another name, or a value that is converted first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def field_names(cls: type[Any]) -> frozenset[str]:
    """The names ``cls(...)`` takes as keywords: a dataclass's init fields or a pydantic
    model's fields."""
    if dataclasses.is_dataclass(cls):
        return frozenset(f.name for f in dataclasses.fields(cls) if f.init)
    model_fields = getattr(cls, "model_fields", None)
    if isinstance(model_fields, Mapping):
        return frozenset(model_fields)
    raise TypeError(f"{cls.__name__} is neither a dataclass nor a pydantic model")


def from_params(
    cls: type[T],
    params: Mapping[str, Any],
    /,
    *,
    unset: Collection[str] = (),
    **explicit: Any,
) -> T:
    """``cls(**kwargs)``: the entries of ``params`` named as ``cls``'s fields, then
    ``explicit`` (added, or replacing an entry of the same name).

    A name in ``unset`` whose value in ``params`` is None is left out, so that the field
    keeps ``cls``'s own default (an option whose None means "not given").
    """
    names = field_names(cls)
    unknown = sorted(set(explicit) - names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {', '.join(unknown)}")
    kwargs = {
        name: value
        for name, value in params.items()
        if name in names and not (value is None and name in unset)
    }
    kwargs.update(explicit)
    return cls(**kwargs)
