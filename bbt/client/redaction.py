"""Keeping API keys and URL credentials out of everything bbt shows, logs or records.

Every message that may hold a key goes through :func:`redact`, every URL that is shown
through :func:`redact_url`; :func:`split_userinfo` keeps a URL's password out of httpx's
request log, and :func:`check_api_key` refuses a key that could not travel in a header.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx
from pydantic import SecretStr

from bbt.errors import ConfigurationError

__all__ = ["check_api_key", "redact", "redact_url", "split_userinfo"]


def redact(text: str, secret: SecretStr | None) -> str:
    """``text`` with every occurrence of the API key replaced, for anything we print."""
    if secret is None:
        return text
    key = secret.get_secret_value()
    return text.replace(key, "***") if key else text


# scheme://userinfo@ : greedy up to the last "@" before the path, query or fragment, as
# urllib splits it (a password may hold a raw "@").
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/?#]*@")
# A query parameter whose value is a credential in every API that uses one.
_URL_SECRET_PARAM = re.compile(
    r"(?i)([?&](?:api[_-]?key|key|token|access[_-]?token|auth|password|passwd|secret|"
    r"sig|signature)=)[^&#\s]*"
)


def redact_url(text: str) -> str:
    """``text`` (a URL, or a message holding URLs) without credentials: any
    ``user:password@`` is dropped and the value of a query parameter that carries one
    (``key``, ``api_key``, ``token``, ``password``, ...) becomes ``***``.

    The one way a URL is recorded or shown: in reprs, error messages, log records, a run's
    manifest and ``prompt_ids.json``. The URL used for requests is left as given.
    """
    return _URL_SECRET_PARAM.sub(r"\1***", _URL_USERINFO.sub(r"\1", text))


def split_userinfo(url: str) -> tuple[str, httpx.BasicAuth | None]:
    """``url`` without its ``user:password@`` part, and those credentials as Basic auth.

    httpx turns a URL's userinfo into Basic auth by itself, but it also logs every request
    URL, userinfo included (logger ``httpx``, INFO). Handing it the bare URL and the same
    credentials as ``auth=`` sends the same requests and logs no password. A URL that
    cannot be split is returned as given, for httpx to refuse as before.
    """
    try:
        parts = urlsplit(url)
        if "@" not in parts.netloc:
            return url, None
        user, password = parts.username or "", parts.password or ""
    except ValueError:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    if not (user or password):
        return bare, None
    return bare, httpx.BasicAuth(unquote(user), unquote(password))


def check_api_key(secret: SecretStr | None) -> None:
    """Refuse, before any request, a key that cannot travel in an ``Authorization`` header.

    A bearer token is one run of visible ASCII (RFC 6750); anything else (an inner space
    or newline, a non-ASCII letter) would make httpx fail on every request, or raise an
    encoding error before it. The message names no character of the key.
    """
    if secret is None:
        return
    if not all("!" <= ch <= "~" for ch in secret.get_secret_value()):
        raise ConfigurationError(
            "the API key (api_key= / BBT_API_KEY) holds characters an HTTP header cannot "
            "carry: spaces, control characters or non-ASCII letters; a key is one token of "
            "printable ASCII"
        )
