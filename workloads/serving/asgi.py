"""Bare ASGI for /invocations: the headers it needs, a bounded body, one complete response.

Starlette's request/response objects and router cost more than the fast path itself, so
/invocations reads and writes ASGI messages directly.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from workloads.serving.admission import RETRY_AFTER_SECONDS
from workloads.serving.protocol import Answer, error

if TYPE_CHECKING:
    from workloads.serving.admission import Ticket

Headers = list[tuple[bytes, bytes]]
_WANTED = (b"x-request-id", b"content-type", b"content-length", b"authorization")
# What a client's X-Request-Id may be: short, and safe in a header, a log line and a Parquet cell.
CLIENT_ID = re.compile(r"[A-Za-z0-9._:/=+@-]{1,128}")


def request_ids(client_value: str | None) -> tuple[str, str | None]:
    """(the server's id, the client's id if valid). The server's id (uuid4) is what capture records and
    labels join on, returned as X-Request-Id; a client's own id cannot collide with or poison it and is
    only echoed back as X-Client-Request-Id."""
    client = client_value if client_value is not None and CLIENT_ID.fullmatch(client_value) else None
    return str(uuid.uuid4()), client


def request_headers(scope: dict) -> dict[bytes, str | None]:
    """X-Request-Id, Content-Type, Content-Length and Authorization; names arrive lower-cased, the first
    occurrence wins."""
    found: dict[bytes, str | None] = dict.fromkeys(_WANTED)
    for key, value in scope["headers"]:
        if key in found and found[key] is None:
            found[key] = value.decode("latin-1")
    return found


async def read_body(receive: Any, declared: str | None, limit: int, ticket: Ticket, timeout: float,
                    meter: Callable[[bytes], None] | None = None) -> bytes:
    """The whole request body, held on the request's admission `ticket` and shown to `meter` chunk by
    chunk (which may refuse it); 413 beyond `limit` bytes (announced or streamed), 408 when it takes
    longer than `timeout` seconds, 400 on disconnect."""
    if declared and declared.isdigit() and int(declared) > limit:
        raise error(413, "RESOURCE_EXHAUSTED", f"request body of {declared} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise error(400, "BAD_REQUEST", "the client disconnected before sending the whole body")
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise error(413, "RESOURCE_EXHAUSTED", f"request body exceeds the limit of {limit} bytes")
                ticket.reserve(len(chunk))
                if meter is not None:
                    meter(chunk)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise error(408, "REQUEST_TIMEOUT", f"the request body did not arrive within {timeout:g} s "
                    "(--body-timeout-seconds)") from None


async def send_answer(send: Any, answer: Answer, headers: Headers) -> None:
    """One complete HTTP response over ASGI, with the headers Starlette's Response would write;
    a 503 (overloaded, or no model yet) says when to retry."""
    body = answer.body.encode()
    media_type = answer.media_type + ("; charset=utf-8" if answer.media_type.startswith("text/") else "")
    retry = [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())] if answer.status == 503 else []
    await send({"type": "http.response.start", "status": answer.status,
                "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", media_type.encode()),
                            *headers, *retry]})
    await send({"type": "http.response.body", "body": body})
