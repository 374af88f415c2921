"""CMA-ES as a pure ask/tell optimiser over z in R^d: no I/O, no global state.

:class:`CMAOptimizer` wraps pycma's ``CMAEvolutionStrategy`` (Hansen, 2016) so that a run is
a function of its seed alone and two optimisers can run in two threads of one process.

Where pycma draws random numbers (pycma 4.x, read from its source):

- every sample (``ask``, the mirrored samples of TPA, the rescaling of injected solutions)
  goes through the ``randn`` option. We pass the ``randn`` of a private, seeded
  ``numpy.random.RandomState``; it pickles with the strategy (by value), so a checkpoint
  holds the exact sampling stream.
- ``seed`` seeds NumPy's *global* RNG, but only when ``randn`` is ``np.random.randn``;
  we set it to NaN ("do nothing").
- ``CMAAdaptSigmaTPA.check_consistency``, called by every ``tell`` once the dimension
  reaches ``cma.evolution_strategy.TPA_dimension`` (300; the paper's d = 500 is above it),
  draws two indices from the *global* RNG to spot-check the mirrored samples and at most
  warns. It changes nothing in the strategy; :func:`_tpa` below skips it. That is the only
  path of the strategy's default configuration that touches the global RNG.
- the rest (integer variables, restarts in ``cma.fmin``, fitness transformations, the
  logger's plots) is not used here.

pycma reports conditions such as flat fitness as Python warnings, and the warnings filter is
process-wide; every pycma call therefore runs under one module-level lock with warnings
ignored, so concurrent optimisers never undo each other's filter changes.

A CMA-ES object restored from a pickle does not always continue bit-for-bit like the object
it was pickled from (internal caches are rebuilt differently). So after every ``tell`` the
optimiser continues with the restored copy of the very pickle :attr:`CMAOptimizer.blob`
holds: an uninterrupted run and a resumed run execute identical code on identical state.
"""

from __future__ import annotations

import math
import pickle
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

F64 = np.ndarray[Any, np.dtype[np.float64]]

# One lock for every pycma call in the process: warnings.catch_warnings() saves and restores
# the process-wide filter list, which two threads doing it at once would scramble.
# Reentrant: the lazily built TPA class is made under it, also from inside a pycma call.
_PYCMA_LOCK = threading.RLock()
_TPA_CLASS: type | None = None


def import_cma() -> Any:
    """pycma, imported lazily; it warns when matplotlib (only needed for its own plots) is
    missing, which says nothing about tuning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*matplotlib.*")
        import cma
    return cma


def cma_seed(seed: int) -> int:
    """A 32-bit seed for CMA-ES's sampler, decorrelated from the projection's PCG64(seed)."""
    return int(np.random.SeedSequence([seed, 0xC3A]).generate_state(1, dtype=np.uint32)[0]) | 1


def _tpa() -> type:
    """pycma's two-point step-size adaptation (TPA) without its global-RNG consistency check
    (see the module docstring): the check draws from ``np.random`` and can only warn.

    Built on first use so that importing bbt does not import pycma; pickles find it as
    ``bbt.tuner.optimizer._TPA`` through the module's ``__getattr__``.
    """
    global _TPA_CLASS
    with _PYCMA_LOCK:  # one class per process, or pickling an instance of a twin would fail
        if _TPA_CLASS is None:
            base: type = import_cma().sigma_adaptation.CMAAdaptSigmaTPA

            def check_consistency(self: Any, es: Any) -> None:
                return None

            attrs = {"check_consistency": check_consistency, "__module__": __name__}
            _TPA_CLASS = type("_TPA", (base,), attrs)
            _TPA_CLASS.__qualname__ = "_TPA"
        return _TPA_CLASS


def __getattr__(name: str) -> Any:
    if name == "_TPA":
        return _tpa()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextmanager
def _pycma() -> Iterator[None]:
    """Run pycma code: serialised process-wide, its warnings ignored (the tuner records stop
    reasons instead, and warnings must not turn into errors under ``-W error``)."""
    with _PYCMA_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _quiet_tpa(es: Any) -> Any:
    """Give a strategy unpickled from an older checkpoint (pycma's own TPA class) the TPA
    without the global-RNG check. Its state is the same object; only the class changes."""
    cma = import_cma()
    if type(es.adapt_sigma) is cma.sigma_adaptation.CMAAdaptSigmaTPA:
        es.adapt_sigma.__class__ = _tpa()
    return es


def new_strategy(
    dim: int, popsize: int, sigma: float, randn_seed: int, bound: float | None = None
) -> Any:
    """A fresh pycma strategy at z = 0 whose randomness all comes from a private RandomState
    seeded with ``randn_seed`` (it travels inside the pickled strategy)."""
    cma = import_cma()
    opts: dict[str, Any] = {
        "popsize": popsize,
        # `seed` would only seed NumPy's global RNG, which is never used: NaN.
        "randn": np.random.RandomState(randn_seed).randn,
        "seed": float("nan"),
        "verbose": -9,
        "verb_log": 0,
        "verb_disp": 0,
        # The budget is the tuner's; pycma's own evaluation limits must never cut in first.
        "maxfevals": float("inf"),
        "maxiter": float("inf"),
    }
    if dim >= cma.evolution_strategy.TPA_dimension:
        # What AdaptSigma=True picks at this dimension, minus the global-RNG check.
        opts["AdaptSigma"] = _tpa()
    if bound is not None:
        opts["bounds"] = [-bound, bound]
    with _pycma():
        return cma.CMAEvolutionStrategy(np.zeros(dim), sigma, inopts=opts)


class CMAOptimizer:
    """CMA-ES over z in R^d with an ask/tell interface; no I/O, no global RNG.

    ``ask()`` returns the population ``[P, d]`` (float64; asked again before ``tell`` it
    returns the same one), ``tell(losses)`` takes one finite loss per candidate of that
    population (lower is better). The start is z = 0 with step size ``sigma``; with
    ``bound`` every coordinate stays within [-bound, bound] (pycma's boundary handling).

    :attr:`blob` is the whole state (a pickle, the RNG stream included) between
    generations; :meth:`from_blob` continues from it bit for bit.
    """

    def __init__(
        self,
        dim: int,
        popsize: int,
        sigma: float,
        seed: int,
        bound: float | None = None,
    ) -> None:
        es = new_strategy(dim, popsize, sigma, cma_seed(seed), bound)
        self._bound = bound
        self._pending: F64 | None = None
        self._set(pickle.dumps(es, protocol=pickle.HIGHEST_PROTOCOL))

    @classmethod
    def from_blob(cls, blob: bytes, bound: float | None = None) -> CMAOptimizer:
        """The optimiser whose :attr:`blob` was ``blob`` (no pending population)."""
        self = cls.__new__(cls)
        self._bound = bound
        self._pending = None
        self._set(blob)
        return self

    def _set(self, blob: bytes) -> None:
        self._blob = blob
        with _pycma():
            self._es = _quiet_tpa(pickle.loads(blob))

    # ------------------------------------------------------------------ state

    @property
    def blob(self) -> bytes:
        """The strategy as of the last ``tell`` (or the start), pickled."""
        return self._blob

    @property
    def es(self) -> Any:
        """The live pycma strategy (read it; changing it breaks resume)."""
        return self._es

    @property
    def dim(self) -> int:
        return int(self._es.N)

    @property
    def popsize(self) -> int:
        return int(self._es.sp.popsize)

    @property
    def sigma(self) -> float:
        return float(self._es.sigma)

    @property
    def pending(self) -> F64 | None:
        """The population asked and not told yet."""
        return self._pending

    def mean(self) -> F64:
        """The distribution's mean as a candidate z (within the bounds, when there are)."""
        es = self._es
        if self._bound is None:
            return np.array(es.mean, dtype=np.float64)
        with _pycma():
            pheno = es.gp.pheno(es.mean, into_bounds=es.boundary_handler.repair)
        return np.array(pheno, dtype=np.float64)

    def stop(self) -> dict[str, Any]:
        """pycma's termination conditions that hold now (empty while it goes on)."""
        with _pycma():
            stops = dict(self._es.stop())
        stops.pop("maxiter", None)
        return stops

    # ------------------------------------------------------------------ ask / tell

    def ask(self) -> F64:
        """The next population, [P, d] (float64)."""
        if self._pending is None:
            with _pycma():
                sols = self._es.ask()
            self._pending = np.asarray(sols, dtype=np.float64)
        return self._pending

    def tell(self, losses: Sequence[float] | F64) -> None:
        """The losses of the pending population, one finite number per candidate."""
        pop = self._pending
        if pop is None:
            raise RuntimeError("tell() without a pending ask()")
        values = np.asarray(losses, dtype=np.float64)
        if values.shape != (pop.shape[0],):
            raise ValueError(f"losses must be {pop.shape[0]} numbers, one per candidate")
        if not all(math.isfinite(v) for v in values.tolist()):
            raise ValueError("losses must be finite")
        with _pycma():
            self._es.tell(list(pop), values.tolist())
            blob = pickle.dumps(self._es, protocol=pickle.HIGHEST_PROTOCOL)
        self._pending = None
        self._set(blob)  # continue from the pickle (see the module docstring)
