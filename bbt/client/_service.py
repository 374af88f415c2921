"""The old home of :mod:`bbt.client.service`, kept for code that imports from it."""

from bbt.client.service import (
    PromptStore,
    Service,
    SessionService,
    UsageStats,
    offers_prompt_registry,
)

__all__ = ["PromptStore", "Service", "SessionService", "UsageStats", "offers_prompt_registry"]
