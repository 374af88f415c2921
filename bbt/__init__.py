"""bbt: Black-Box Tuning of soft prompts against a language model served as an API.

Black-Box Tuning (Sun et al., ICML 2022) searches a low-dimensional vector z with CMA-ES;
a fixed random projection maps it to soft-prompt embeddings p = A z + p0 that a remote
masked LM scores through its inference API. The pieces::

    bbt.protocol  wire models shared by client and server (protocol v1)
    bbt.client    Client / AsyncClient (HTTP), LocalClient (in-process backend)
    bbt.tuner     tasks, data, projection, losses, the CMA-ES loop, run directories
    bbt.server    app factory, mock backend, Hugging Face backend (extras)
    bbt.testing   pytest fixtures for offline tests against the mock

Quick start::

    import bbt
    with bbt.Client("http://127.0.0.1:8000", api_key="...") as client:
        task = bbt.get_preset("sst2")
        ...
        result = bbt.tune(client, task, train, dev, bbt.TuneConfig(budget=8000))
"""

from bbt import errors
from bbt._version import __version__
from bbt.client import AsyncClient, Client, ClientSettings, LocalClient, Service, UsageStats
from bbt.comparison import compare
from bbt.errors import BBTError
from bbt.tuner import (
    Task,
    TuneConfig,
    TunedPrompt,
    TuneOptions,
    Tuner,
    TuneResult,
    get_preset,
    load_examples,
    resume,
    sample_k_shot,
    tune,
)

__all__ = [
    "AsyncClient",
    "BBTError",
    "Client",
    "ClientSettings",
    "LocalClient",
    "Service",
    "Task",
    "TuneConfig",
    "TuneOptions",
    "TuneResult",
    "TunedPrompt",
    "Tuner",
    "UsageStats",
    "__version__",
    "compare",
    "errors",
    "get_preset",
    "load_examples",
    "resume",
    "sample_k_shot",
    "tune",
]
