"""Projection sessions in the server (protocol 1.1), for any backend.

The app layer owns sessions, not the backends: :class:`bbt.protocol.sessions.SessionHost`
builds A once per session and projects each call's z to prompts, then the backend scores
those prompts through its ordinary ``logits``. So the mock, the Hugging Face backend and
any other backend serve sessions unchanged. A backend may offer to project on its own
device by defining ``session_projector(matrix, p0) -> (z -> prompts)`` (see
:data:`bbt.protocol.sessions.Projector`); without it NumPy projects in float32 exactly as
the client's ``Projection.project`` does.

The host's code lives in :mod:`bbt.protocol.sessions` so that
:class:`bbt.client.LocalClient` runs the very same code without importing the server.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bbt.protocol import ModelInfo
from bbt.protocol.sessions import (
    FloatArray,
    ProjectFn,
    Projector,
    SessionHost,
    SessionLimits,
    SessionNotFound,
    SessionsFull,
    tenant_of,
)
from bbt.server.backend import Backend


def torch_projector(device: str) -> Projector:
    """Project with torch on ``device`` (A lives there): z A + p0 in one ``addmm``.

    For backends whose model is on a GPU: the projection of a paper-scale population is
    then a fraction of a millisecond instead of tens on the CPU. Results match NumPy's
    within float32 rounding, not bitwise.
    """

    def build(matrix: FloatArray, p0: FloatArray) -> ProjectFn:
        import torch

        a = torch.from_numpy(matrix).to(device)
        base = torch.from_numpy(np.ascontiguousarray(p0)).to(device).reshape(-1)
        n_tokens = p0.shape[0]

        def project(z: FloatArray) -> FloatArray:
            zt = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32)).to(device)
            out: Any = torch.addmm(base, zt, a).reshape(z.shape[0], n_tokens, -1)
            result: FloatArray = out.cpu().numpy()
            return result

        return project

    return build


def session_host(backend: Backend, info: ModelInfo, limits: SessionLimits) -> SessionHost:
    """The session host of ``backend``: projecting with the backend's own
    ``session_projector`` if it has one, with torch on its GPU when its model is on one
    (the Hugging Face backend's ``device``), else with NumPy (bitwise the client's)."""
    projector: Projector | None = getattr(backend, "session_projector", None)
    device = str(getattr(backend, "device", ""))
    if projector is None and device.startswith("cuda"):
        projector = torch_projector(device)
    return SessionHost(info, backend.embed, backend.tokenize, limits, projector=projector)


__all__ = [
    "SessionHost",
    "SessionLimits",
    "SessionNotFound",
    "SessionsFull",
    "session_host",
    "tenant_of",
    "torch_projector",
]
