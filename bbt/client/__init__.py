"""Clients for LMaaS endpoints speaking protocol v1."""

from bbt.client._service import Service, UsageStats

__all__ = ["Service", "UsageStats"]
