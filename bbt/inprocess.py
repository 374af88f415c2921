"""Which code serves :class:`bbt.client.LocalClient`'s prompt registry by default.

The client must install and run without the server, so ``bbt.client`` imports nothing of
``bbt.server``; the in-process prompt registry, though, is the server's own code
(:class:`bbt.server.local.LocalPromptHost`). ``LocalClient`` takes it as an argument
(``prompt_host=``); this module, which sits above both packages as ``bbt/__init__`` does,
is where a ``LocalClient`` made without one finds the default, on its first registry call.
A client that never stores a prompt never loads any of it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bbt.protocol.backend import Backend
    from bbt.server.local import LocalPromptHost

__all__ = ["default_prompt_host"]


def default_prompt_host(backend: Backend, registry: Any = None) -> LocalPromptHost:
    """The server's in-process prompt registry for ``backend``, on ``registry`` (a
    ``bbt.server.registry.PromptRegistry``; default: one in memory)."""
    from bbt.server.local import prompt_host

    return prompt_host(backend, registry)
