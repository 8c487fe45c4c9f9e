"""The gate of ``fitdock script serve``: ASGI middleware that answers before FastAPI reads
anything: 401 without the bearer token (when one is set), 415 for a body that is not JSON,
413 for a body over the limit (by Content-Length, and by counting what arrives; a body
over ``DRAIN_BYTES`` is not read at all and the connection closes).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["DRAIN_BYTES", "UNAUTHORIZED", "Guard"]

DRAIN_BYTES = 64 * 1024 * 1024  # an oversized body is read (and dropped) up to this, then 413
UNAUTHORIZED = "missing or wrong bearer token: send the header 'Authorization: Bearer TOKEN'"
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Guard:
    """ASGI middleware, before FastAPI reads anything: the bearer token (401), a JSON body
    (415), the body's size (413: by Content-Length, and by counting what arrives)."""

    def __init__(self, app: Any, *, token: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.token = token.encode() if token is not None else None
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])  # lower-case names; the last of a repeated one
        refused = self._refuse(scope["method"], headers)
        if refused is None:
            declared = headers.get(b"content-length", b"")
            if declared.isdigit() and int(declared) > DRAIN_BYTES:
                refused = self._too_large()  # not worth reading: the connection closes
            else:
                body = await _read(receive, self.limit)
                refused = self._too_large() if body is None else None
        if refused is not None:
            status, detail, extra = refused
            await _send(send, status, {"detail": detail}, extra)
            return
        given = False

        async def replay() -> Message:
            nonlocal given
            if given:
                return await receive()
            given = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _refuse(self, method: str, headers: dict[bytes, bytes]) -> _Refusal | None:
        if self.token is not None:
            scheme, _, value = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(value.strip(), self.token):
                return 401, UNAUTHORIZED, [(b"www-authenticate", b"Bearer")]
        kind = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if method == "POST" and kind != b"application/json" and not kind.endswith(b"+json"):
            what = kind.decode(errors="replace")
            return (
                415,
                f"send the body as JSON, with 'Content-Type: application/json', not {what!r}",
                [],
            )
        return None

    def _too_large(self) -> _Refusal:
        detail = f"the request body is over the limit of {self.limit:,} bytes"
        return 413, detail, [(b"connection", b"close")]


_Refusal = tuple[int, str, list[tuple[bytes, bytes]]]


async def _read(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None when it is over ``limit`` bytes; an oversized body is read
    to its end (up to ``DRAIN_BYTES``) so that the client gets to read the answer."""
    chunks: list[bytes] = []
    size = 0
    while size <= DRAIN_BYTES:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return None
        size += len(message.get("body", b""))
        if size <= limit:
            chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks) if size <= limit else None


async def _send(send: Send, status: int, content: dict[str, Any], headers: list[Any]) -> None:
    body = json.dumps(content).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
