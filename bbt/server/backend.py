"""The backend contract, re-exported from its home :mod:`bbt.protocol.backend`.

It lives in the protocol package so that the client (``LocalClient``) can use it without
importing the server package; ``from bbt.server.backend import Backend`` keeps working.
"""

from bbt.protocol.backend import Backend, FloatArray, IntArray

__all__ = ["Backend", "FloatArray", "IntArray"]
