"""Tuning methods, by name: ``bbt`` (one prompt at the input) and ``bbtv2`` (a prompt at
every layer). Everything that must tell methods apart asks :func:`get` for the run's
method (``TuneConfig.method``)::

    from bbt.tuner import methods
    method = methods.get(config.method)
    tuner = method.build(TunerInputs(service, task, train, dev, config))

A new method subclasses :class:`Method` and is added with :func:`register`;
:class:`~bbt.tuner.inputs.TunerInputs` (re-exported here) is what ``build`` takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bbt.tuner.inputs import TunerInputs
from bbt.tuner.methods.base import CallCounts, Method, PromptLayout, dev_calls, generations
from bbt.tuner.methods.registry import available, get, register, unregister

if TYPE_CHECKING:
    from bbt.client import Service
    from bbt.tuner.data import Example
    from bbt.tuner.tasks import Task
    from bbt.tuner.tuner import TuneConfig, Tuner

__all__ = [
    "CallCounts",
    "Method",
    "PromptLayout",
    "TunerInputs",
    "available",
    "build_tuner",
    "dev_calls",
    "generations",
    "get",
    "method_of",
    "register",
    "unregister",
]


def method_of(tuner: Tuner) -> Method:
    """The method a tuner was built for (its config names it)."""
    return get(tuner.config.method)


def build_tuner(
    service: Service,
    task: Task,
    train: Sequence[Example],
    dev: Sequence[Example],
    config: TuneConfig,
    **kwargs: Any,
) -> Tuner:
    """The tuner of ``config.method``, built by that method."""
    from bbt.tuner.readout import attach_readout

    tuner = get(config.method).build(TunerInputs(service, task, train, dev, config, **kwargs))
    return attach_readout(tuner)  # type: ignore[no-any-return]
