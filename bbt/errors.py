"""Every exception bbt raises on purpose.

::

    BBTError
    ├── ConfigurationError          bad or missing settings (URL, key, model, files)
    ├── TaskError                   a task, template, verbalizer or data set that cannot work
    ├── RunError                    a run directory that cannot be written, read or resumed
    │   └── UnsafeRunDirError       one holding a link, FIFO or device bbt would write through
    ├── InvalidRequestError         (also a ValueError) a call the client refused before
    │                               sending: it breaks the protocol or the model's limits
    └── APIError                    anything that went wrong talking to an LMaaS endpoint
        ├── APIConnectionError      no HTTP response (refused, reset, DNS, TLS)
        │   └── APITimeoutError     no response in time
        ├── MalformedRequestError   (also a ConfigurationError) httpx would not send the
        │                           request as built (a header value such as the API key
        │                           with illegal characters, a URL with no http(s)://);
        │                           never retried
        ├── APIStatusError          the server answered with an error status
        │   ├── BadRequestError         400, 413, 422: the request is wrong; never retried
        │   ├── AuthenticationError     401
        │   ├── PermissionDeniedError   403
        │   ├── NotFoundError           404
        │   ├── RateLimitError          429 (retried, honouring Retry-After)
        │   └── ServerError             5xx (retried)
        └── ProtocolError           a response that does not follow the protocol

Lower-level exceptions (httpx, pydantic) are mapped to these at one boundary, in
``bbt.client``, and kept as ``__cause__``. No message ever contains an API key.
"""

from __future__ import annotations


def _where(field: str | None) -> str:
    """How a message names the request field it is about (local and server errors alike)."""
    return f" (field: {field})" if field else ""


class BBTError(Exception):
    """Base class of every bbt exception."""


class ConfigurationError(BBTError):
    """Settings are missing or contradictory."""


class TaskError(BBTError):
    """A task definition or data set cannot be used (e.g. a multi-token verbalizer word)."""


class RunError(BBTError):
    """A run directory cannot be created, loaded or resumed."""


class UnsafeRunDirError(RunError):
    """A run directory holds an entry bbt refuses to open: a symbolic link, a hard-linked file
    it would write in place, a FIFO or a device. Run directories are shared like any
    artifact, and following such an entry would write (or block) outside the directory."""


class InvalidRequestError(BBTError, ValueError):
    """A call rejected by the client's pre-flight checks, so it cost no request.

    Raised for the same mistakes a server answers with 400/404/413/422 (``field`` names
    the offending field, ``error_type`` the protocol's error class), but locally: no
    request was sent and nothing was billed.
    """

    def __init__(
        self, message: str, *, field: str | None = None, error_type: str = "invalid_request"
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.error_type = error_type

    def __str__(self) -> str:
        return f"{self.message}{_where(self.field)}"


class APIError(BBTError):
    """Base class of errors talking to an LMaaS endpoint."""

    def __init__(self, message: str, *, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id


class APIConnectionError(APIError):
    """The request got no HTTP response."""


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class MalformedRequestError(APIError, ConfigurationError):
    """The request could not be sent as built: a settings problem, not a network one.

    httpx refused it before anything reached the server (``httpx.LocalProtocolError``, an
    illegal header value, say, or ``httpx.UnsupportedProtocol``); sending it again would
    fail the same way, so it is never retried. Catch it as either an :class:`APIError` or
    a :class:`ConfigurationError`.
    """


class APIStatusError(APIError):
    """The server answered with a 4xx or 5xx status."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        error_type: str | None = None,
        field: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, request_id=request_id)
        self.status_code = status_code
        self.error_type = error_type
        self.field = field

    def __str__(self) -> str:
        kind = self.error_type or "error"
        return f"{self.status_code} {kind}: {self.message}{_where(self.field)}"


class BadRequestError(APIStatusError):
    """400/413/422: the request breaks the protocol or the model's limits."""


class AuthenticationError(APIStatusError):
    """401: missing or wrong API key."""


class PermissionDeniedError(APIStatusError):
    """403: the key may not do this."""


class NotFoundError(APIStatusError):
    """404: unknown route or model."""


class RateLimitError(APIStatusError):
    """429: slow down; ``retry_after`` holds the server's hint in seconds, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ServerError(APIStatusError):
    """5xx: the server failed; ``retry_after`` holds a 503's Retry-After in seconds, if any."""

    retry_after: float | None = None


class ProtocolError(APIError):
    """The response is not what protocol v1 says it must be."""


__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BBTError",
    "BadRequestError",
    "ConfigurationError",
    "InvalidRequestError",
    "MalformedRequestError",
    "NotFoundError",
    "PermissionDeniedError",
    "ProtocolError",
    "RateLimitError",
    "RunError",
    "ServerError",
    "TaskError",
    "UnsafeRunDirError",
]
