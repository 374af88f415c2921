"""SyncServiceCalls: the sync calls written once for Client and LocalClient, and the async
client's calls kept in step with them (their signatures cannot be shared)."""

from __future__ import annotations

import inspect

import pytest

from bbt.client import AsyncClient, Client, LocalClient
from bbt.client._sync_calls import SyncServiceCalls


def _calls(cls: type) -> set[str]:
    """The public calls (plain methods) of ``cls``, inherited ones too."""
    return {n for n in dir(cls) if not n.startswith("_") and inspect.isfunction(getattr(cls, n))}


#: model_info is each client's own (SyncServiceCalls only declares it).
SHARED = sorted(_calls(SyncServiceCalls) - {"model_info"})
#: Client calls with no async twin of the same name (AsyncClient closes with aclose).
SYNC_ONLY = {"close"}


def test_the_shared_calls_are_the_session_registry_and_scoring_calls() -> None:
    assert {"logits", "features", "open_session", "session_logits", "store_prompt"} <= set(SHARED)


@pytest.mark.parametrize("name", SHARED)
def test_both_sync_clients_run_the_shared_call(name: str) -> None:
    shared = getattr(SyncServiceCalls, name)
    assert getattr(Client, name) is shared
    assert getattr(LocalClient, name) is shared


@pytest.mark.parametrize("name", sorted(_calls(Client) & _calls(LocalClient)))
def test_local_client_takes_the_clients_arguments(name: str) -> None:
    client = inspect.signature(getattr(Client, name))
    local = inspect.signature(getattr(LocalClient, name))
    assert local.parameters == client.parameters


def test_the_async_client_has_every_sync_call() -> None:
    assert _calls(Client) - SYNC_ONLY <= _calls(AsyncClient)


@pytest.mark.parametrize("name", sorted(_calls(Client) - SYNC_ONLY))
def test_the_async_client_takes_the_same_arguments(name: str) -> None:
    sync = inspect.signature(getattr(Client, name))
    async_ = inspect.signature(getattr(AsyncClient, name))
    assert async_.parameters == sync.parameters
