"""Options as data: a config object built from a command's parsed options, and a group of
options several commands declare once.

Where a command's parameter names are the config's field names, :func:`from_params` takes them
from ``ctx.params`` (what click parsed, before typer calls the command) instead of copying
each one by hand; the caller passes explicitly only what differs: a field whose option has
another name, or a value that is converted first.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Collection, Mapping
from typing import Any, ParamSpec, TypeVar, get_type_hints

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")


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


#: The default of a command's parameter that :func:`grouped` fills (typer never sees it).
GROUP: Any = object()


def grouped(group: type[Any], name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Declare the options of ``group`` once for several commands.

    ``group`` is a dataclass whose field defaults are typer options. The decorated command
    has a parameter ``name`` (annotated ``group``, default :data:`GROUP`); typer sees the
    group's fields as options in its place, in the same order, and the command gets them
    as one ``group`` value.
    """
    members = [f.name for f in dataclasses.fields(group)]
    hints = get_type_hints(group)

    def decorate(command: Callable[P, R]) -> Callable[P, R]:
        signature = inspect.signature(command, eval_str=True)
        params: list[inspect.Parameter] = []
        for param in signature.parameters.values():
            if param.name != name:
                params.append(param)
                continue
            for f in dataclasses.fields(group):
                params.append(
                    inspect.Parameter(
                        f.name, param.kind, default=f.default, annotation=hints[f.name]
                    )
                )

        @functools.wraps(command)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            values = {member: kwargs.pop(member) for member in members}
            kwargs[name] = group(**values)
            return command(*args, **kwargs)

        run.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return decorate
