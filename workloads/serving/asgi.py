"""Bare ASGI for /invocations: the headers it needs, a bounded body, one complete response.

Starlette's request/response objects and router cost more than the fast path itself, so
/invocations reads and writes ASGI messages directly.
"""

from __future__ import annotations

from typing import Any

from workloads.serving.protocol import Answer, error

Headers = list[tuple[bytes, bytes]]
_WANTED = (b"x-request-id", b"content-type", b"content-length")


def request_headers(scope: dict) -> dict[bytes, str | None]:
    """X-Request-Id, Content-Type and Content-Length; names arrive lower-cased, the first occurrence wins."""
    found: dict[bytes, str | None] = dict.fromkeys(_WANTED)
    for key, value in scope["headers"]:
        if key in found and found[key] is None:
            found[key] = value.decode("latin-1")
    return found


async def read_body(receive: Any, declared: str | None, limit: int) -> bytes:
    """The whole request body; 413 beyond `limit` bytes (announced or streamed), 400 on disconnect."""
    if declared and declared.isdigit() and int(declared) > limit:
        raise error(413, "RESOURCE_EXHAUSTED", f"request body of {declared} bytes exceeds the limit of {limit}")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise error(400, "BAD_REQUEST", "the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise error(413, "RESOURCE_EXHAUSTED", f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_answer(send: Any, answer: Answer, headers: Headers) -> None:
    """One complete HTTP response over ASGI, with the headers Starlette's Response would write."""
    body = answer.body.encode()
    media_type = answer.media_type + ("; charset=utf-8" if answer.media_type.startswith("text/") else "")
    await send({"type": "http.response.start", "status": answer.status,
                "headers": [(b"content-length", str(len(body)).encode()), (b"content-type", media_type.encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
