"""Clients for LMaaS endpoints speaking protocol v1.

:class:`Client` (blocking) and :class:`AsyncClient` talk HTTP; :class:`LocalClient` serves
the same :class:`Service` interface from a backend in the same process.
"""

from bbt.client._async import AsyncClient
from bbt.client._client import Client
from bbt.client._config import ClientSettings
from bbt.client._local import LocalClient
from bbt.client.projection_sessions import ProjectionSession
from bbt.client.service import FeatureService, ScoreService, Service, SessionService
from bbt.client.transport import UsageStats

__all__ = [
    "AsyncClient",
    "Client",
    "ClientSettings",
    "FeatureService",
    "LocalClient",
    "ProjectionSession",
    "ScoreService",
    "Service",
    "SessionService",
    "UsageStats",
]
