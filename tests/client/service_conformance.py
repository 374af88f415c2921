"""What it takes to be a :class:`bbt.client.Service`, checked by behaviour.

The check ships with bbt (:mod:`bbt.testing.contracts`, as a one-call function and as the
``ServiceContract`` class to subclass); the client tests keep importing it from here.
"""

from __future__ import annotations

from bbt.testing.contracts import assert_is_service

__all__ = ["assert_is_service"]
