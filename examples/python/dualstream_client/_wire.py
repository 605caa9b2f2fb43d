"""Frames, connections and reconnection shared by the producer and the trainer.

Frames are MessagePack maps (any implementation talks to the engine: `useRecords: false` on its
side). Payloads are left as the engine sent them: `raw=False` decodes strings as `str` and keeps
`bin` as `bytes`, and `strict_map_key=False` accepts the non-string keys a producer's payload may
hold.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import ssl
from typing import Any, Mapping, Optional, Union
from urllib.parse import urlencode, urlsplit, urlunsplit, parse_qsl

import msgpack
import websockets
import websockets.exceptions

from .errors import DualstreamError, ServerRefused, Unauthorized, Disconnected

log = logging.getLogger("dualstream_client")

WS_MAJOR = int(websockets.__version__.split(".")[0])
# a batch of a few thousand rollouts with payloads can be large: the engine's default frame cap is 16 MiB
DEFAULT_MAX_SIZE = 64 * 1024 * 1024
# bodies of HTTP error answers at the upgrade are short JSON: read no more than this of them
_MAX_ERROR_BODY = 64 * 1024

Frame = dict[str, Any]
Connection = Any  # a websockets client connection (legacy protocol before 14, asyncio connection after)


def encode(frame: Mapping[str, Any]) -> bytes:
    """A frame as MessagePack (`bytes` become `bin`, `str` become `str`)."""
    return msgpack.packb(frame, use_bin_type=True)


def decode(message: Union[bytes, str]) -> Frame:
    """A frame from the engine: binary = MessagePack, text = JSON (`?format=json`)."""
    if isinstance(message, str):
        frame = json.loads(message)
    else:
        frame = msgpack.unpackb(message, raw=False, strict_map_key=False)
    if not isinstance(frame, dict):
        raise DualstreamError(f"the engine sent a frame that is not a map: {type(frame).__name__}")
    return frame


def with_query(url: str, **params: Any) -> str:
    """`url` with query parameters added or replaced (None values left out)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    query.update({key: str(value) for key, value in params.items() if value is not None})
    return urlunsplit(parts._replace(query=urlencode(query)))


def token_from_env(token: Optional[str], variable: str) -> Optional[str]:
    """The token given, else the role's environment variable (unset or empty = no token)."""
    if token is not None:
        return token
    return os.environ.get(variable) or None


if WS_MAJOR < 14:
    from websockets.legacy.client import WebSocketClientProtocol

    class _ProtocolKeepingErrorBodies(WebSocketClientProtocol):
        """Reads the body of an HTTP error answer to the upgrade (websockets < 14 drops it).

        The engine says in it why it refused (e.g. which token a 401 wanted).
        """

        error_body = b""

        async def read_http_response(self) -> Any:
            status, headers = await super().read_http_response()
            length = headers.get("Content-Length")
            if status != 101 and length is not None and length.isdigit() and 0 < int(length) <= _MAX_ERROR_BODY:
                try:
                    self.error_body = await asyncio.wait_for(self.reader.readexactly(int(length)), 5)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, OSError):
                    pass
            return status, headers

        async def handshake(self, *args: Any, **kwargs: Any) -> None:
            try:
                await super().handshake(*args, **kwargs)
            except websockets.exceptions.InvalidStatusCode as error:
                error.body = self.error_body  # type: ignore[attr-defined]
                raise


def _refusal(url: str, error: Exception) -> Optional[ServerRefused]:
    """The `ServerRefused` (or `Unauthorized`) for an HTTP error answer at the upgrade, else None."""
    response = getattr(error, "response", None)  # websockets >= 14: InvalidStatus
    status = getattr(response, "status_code", None) or getattr(error, "status_code", None)
    if status is None:
        return None
    body = getattr(response, "body", None) if response is not None else getattr(error, "body", None)
    reason: Optional[str] = None
    if body:
        try:
            reason = str(json.loads(body)["error"])
        except (ValueError, KeyError, TypeError):
            reason = body.decode("utf-8", "replace").strip()[:500] or None
    redacted = with_query(url, token="…") if "token=" in url else url
    return Unauthorized(redacted, reason) if status == 401 else ServerRefused(redacted, status, reason)


async def open_connection(
    url: str,
    token: Optional[str],
    *,
    max_size: Optional[int] = DEFAULT_MAX_SIZE,
    open_timeout: Optional[float] = 10,
    ping_interval: Optional[float] = 20,
    ssl_context: Optional[ssl.SSLContext] = None,
) -> Connection:
    """Opens a WebSocket with ``Authorization: Bearer <token>``.

    For a ``wss://`` URL, ``ssl_context`` says which certificates to trust (e.g.
    ``ssl.create_default_context(cafile="cert.pem")`` for a self-signed server); None = the
    system's CAs. Raises `Unauthorized` on a 401 (with the server's reason), `ServerRefused` on other HTTP
    errors; network errors propagate as `OSError` / websockets exceptions.
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    options: dict[str, Any] = {"max_size": max_size, "open_timeout": open_timeout, "ping_interval": ping_interval}
    if ssl_context is not None:
        # only when given: websockets picks the default context for wss:// and refuses one for ws://
        options["ssl"] = ssl_context
    try:
        if WS_MAJOR >= 14:
            return await websockets.connect(url, additional_headers=headers, **options)
        return await websockets.connect(url, extra_headers=headers, create_protocol=_ProtocolKeepingErrorBodies, **options)
    except websockets.exceptions.InvalidHandshake as error:
        refusal = _refusal(url, error)
        if refusal is not None:
            raise refusal from None
        raise


def close_code(error: BaseException) -> Optional[int]:
    """The close code the server sent, for a `ConnectionClosed` (None when none was received)."""
    received = getattr(error, "rcvd", None)
    return None if received is None else received.code


# what a dropped or refused connection raises, when trying again may succeed
TRANSIENT = (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException)


def is_fatal(error: BaseException) -> bool:
    """Whether reconnecting cannot help: a refused token or path (4xx), or our own mistake."""
    if isinstance(error, ServerRefused):
        return error.status < 500
    if isinstance(error, websockets.exceptions.InvalidURI):
        return True
    if isinstance(error, ssl.SSLCertVerificationError):
        return True  # a server certificate the context does not trust stays untrusted
    return not isinstance(error, TRANSIENT)


class Backoff:
    """Exponential backoff with jitter between reconnection attempts.

    Waits about `initial` seconds after the first failure, doubling up to `maximum`; gives up with
    `Disconnected` after `max_retries` consecutive failures (None = never). `reset()` after a
    connection that worked.
    """

    def __init__(self, initial: float = 0.05, maximum: float = 5.0, max_retries: Optional[int] = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self.max_retries = max_retries
        self.failures = 0

    def reset(self) -> None:
        self.failures = 0

    async def wait(self, error: BaseException, what: str) -> None:
        """Sleeps before the next attempt, or raises `Disconnected` once the retries are spent."""
        self.failures += 1
        if self.max_retries is not None and self.failures > self.max_retries:
            raise Disconnected(f"{what}: giving up after {self.max_retries} retries: {error}") from error
        delay = min(self.maximum, self.initial * 2 ** (self.failures - 1)) * random.uniform(0.5, 1.0)
        log.info("%s: %s; reconnecting in %.2f s", what, error, delay)
        await asyncio.sleep(delay)
