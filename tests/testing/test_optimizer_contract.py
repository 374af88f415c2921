"""The shipped optimiser contract (bbt.testing.contracts.OptimizerContract): importing it
stays light, a third-party optimiser written against the protocol alone passes it, and it
fails the faults the tuner cannot live with. bbt's own optimisers run it in
tests/tuner/optimizers/test_base.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from bbt.testing.contracts import OptimizerContract
from bbt.tuner.optimizers import OptimizerFactory, OptimizerSpec

F64 = np.ndarray[Any, np.dtype[np.float64]]


def test_importing_the_contracts_loads_no_framework() -> None:
    code = (
        "import sys\nimport bbt.testing.contracts\n"
        "heavy = ('fastapi', 'starlette', 'uvicorn', 'torch', 'bbt.server')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy"
        " or m.startswith('bbt.server')))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


class RandomSearch:
    """A third-party optimiser: the best point so far plus Gaussian steps that shrink when
    a generation finds nothing better; its own Generator, its state plain data."""

    def __init__(self, spec: OptimizerSpec) -> None:
        self._spec = spec
        self._rng = np.random.default_rng(spec.sampler_seed)
        self._best: F64 = np.zeros(spec.dim)
        self._best_loss = float("inf")
        self._sigma = float(spec.sigma)
        self._pending: F64 | None = None

    @property
    def dim(self) -> int:
        return self._spec.dim

    @property
    def popsize(self) -> int:
        return self._spec.popsize

    @property
    def sigma(self) -> float:
        return self._sigma

    @property
    def pending(self) -> F64 | None:
        return self._pending

    def mean(self) -> F64:
        return self._best.copy()

    def stop(self) -> dict[str, Any]:
        return {}

    def ask(self) -> F64:
        if self._pending is None:
            step = self._rng.standard_normal((self.popsize, self.dim)) * self._sigma
            pop = self._best + step
            b = self._spec.bound
            self._pending = pop if b is None else np.clip(pop, -b, b)
        return self._pending

    def tell(self, losses: Sequence[float] | F64) -> None:
        if self._pending is None:
            raise RuntimeError("tell() without ask()")
        values = np.asarray(losses, dtype=np.float64)
        if values.shape != (self.popsize,):
            raise ValueError(f"want {self.popsize} losses")
        i = int(np.argmin(values))
        if values[i] < self._best_loss:
            self._best, self._best_loss = self._pending[i].copy(), float(values[i])
        else:
            self._sigma *= 0.8
        self._pending = None

    def state_dict(self) -> dict[str, Any]:
        rng = self._rng.bit_generator.state
        return {
            "format": "random-search/1",
            "best": self._best.copy(),
            "best_loss": self._best_loss,
            "sigma": self._sigma,
            "rng": {"state": str(rng["state"]["state"]), "inc": str(rng["state"]["inc"])},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != "random-search/1":
            raise ValueError("not a random-search state")
        self._best = np.array(state["best"], dtype=np.float64)
        self._best_loss = float(state["best_loss"])
        self._sigma = float(state["sigma"])
        rng = self._rng.bit_generator.state
        rng["state"] = {"state": int(state["rng"]["state"]), "inc": int(state["rng"]["inc"])}
        self._rng.bit_generator.state = rng
        self._pending = None


class TestAThirdPartyOptimizer(OptimizerContract):
    @pytest.fixture
    def factory(self) -> OptimizerFactory:
        return RandomSearch


class _TellsWithoutAsk(RandomSearch):
    def tell(self, losses: Sequence[float] | F64) -> None:
        if self._pending is None:
            self.ask()
        super().tell(losses)


class _PicklesItsState(RandomSearch):
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rng": self._rng}


class _ForgetsItsStream(RandomSearch):
    def load_state_dict(self, state: dict[str, Any]) -> None:
        rng = self._rng.bit_generator.state
        super().load_state_dict(state)
        self._rng.bit_generator.state = rng


@pytest.mark.parametrize(
    ("broken", "test"),
    [
        (_TellsWithoutAsk, "test_tell_without_ask_is_refused"),
        (_PicklesItsState, "test_state_dict_is_json_and_arrays_only"),
        (_ForgetsItsStream, "test_a_state_dict_taken_mid_run_continues_bit_for_bit"),
    ],
)
def test_the_contract_fails_what_the_tuner_cannot_use(broken: OptimizerFactory, test: str) -> None:
    contract = OptimizerContract()
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        getattr(contract, test)(broken)
    getattr(contract, test)(RandomSearch)  # the sound one passes the same test
