"""One escape for every request-derived string the server logs.

uvicorn percent-decodes the request path, so ``%0d%0a`` reaches the app as a real CR LF:
written raw, it ends the log line and the rest reads as a request that never happened.
:func:`loggable` keeps a log line one line, and its fields where they are.
"""

from __future__ import annotations

#: Printable characters escaped anyway: a space would start a forged field on the same
#: line, a quote would close a quoted one, and a backslash must not pose as an escape.
_ALSO_ESCAPED = frozenset(' "\\')


def _escape(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def loggable(value: object) -> str:
    """``value`` as text safe to log: control characters (C0, DEL, C1), Unicode line and
    paragraph separators and other non-printables, spaces, quotes and backslashes become
    ``\\xNN`` / ``\\uNNNN`` escapes; everything else, non-ASCII letters included, is kept."""
    text = str(value)
    if text.isprintable() and _ALSO_ESCAPED.isdisjoint(text):
        return text  # the common case: an ordinary path costs one scan
    return "".join(_escape(c) if c in _ALSO_ESCAPED or not c.isprintable() else c for c in text)


__all__ = ["loggable"]
