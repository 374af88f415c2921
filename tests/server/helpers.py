"""Request builders shared by the server tests: those the shipped contract suites use."""

from __future__ import annotations

from bbt.testing.contracts.requests import assert_envelope, logits_body, prompts, texts

__all__ = ["assert_envelope", "logits_body", "prompts", "texts"]
