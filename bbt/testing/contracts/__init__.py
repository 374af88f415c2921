"""Shipped contract suites: pytest classes a backend or a service subclasses to prove it
behaves as bbt expects (docs/testing.md, *Contract suites*).

- :class:`BackendContract`: a :class:`~bbt.server.backend.Backend` behind the server
  (discovery, tokenize, embeddings, logits, every limit enforced with an error envelope).
- :class:`ServiceContract`: a client-side :class:`~bbt.client.Service` (signatures and
  behaviour of ``model_info``, ``tokenize``, ``embed``, ``logits``, ``usage``).
- :class:`OptimizerContract`: an :class:`~bbt.tuner.optimizers.Optimizer` (ask/tell
  alternation, a JSON-and-arrays state that resumes bit for bit, determinism, bounds).

Importing this package imports pytest (you are writing tests); it never imports FastAPI or
torch. ``bbt.testing`` itself does not import it.
"""

from __future__ import annotations

from bbt.testing.contracts._backend import BackendContract
from bbt.testing.contracts._service import ServiceContract, assert_is_service
from bbt.testing.contracts.optimizer import OptimizerContract

__all__ = ["BackendContract", "OptimizerContract", "ServiceContract", "assert_is_service"]
