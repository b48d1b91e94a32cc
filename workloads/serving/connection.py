"""Connections bounded in size and time: uvicorn's httptools protocol with the limits it lacks.

uvicorn 0.55 bounds neither the header section (httptools accepts 10,000 headers and keeps a
header of any length) nor the time a client takes to send it (a connection that sends nothing,
or one byte a second, is held forever; `timeout_keep_alive` only starts after a response), and
its `limit_concurrency` counts idle connections as load, so 1,000 idle sockets would turn every
real request away. This protocol adds, per connection:
- headers: at most `max_headers` fields and `max_header_bytes` for the request line and
  headers, else 431 and close;
- time: the headers of each request must arrive within `header_timeout_seconds` of its first
  byte (of the connection, for the first one), else 408 and close; bodies have their own
  deadline in the app (asgi.read_body); idle keep-alive closes after `keep_alive_seconds`;
- count: beyond `max_connections` open connections per worker a new one gets 503 with
  Retry-After and is closed;
- half-close: a client that shuts down its sending side after a whole request still gets the
  answer (uvicorn treats that EOF as a disconnect and drops it), then the connection closes.
Scoring requests in flight are bounded by the app (admission.py), not by connections.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from workloads.serving.admission import RETRY_AFTER_SECONDS

if TYPE_CHECKING:
    from workloads.settings import ServeSettings

# After refusing a request a client may still be sending it: keep reading (and discarding) for a
# moment so it gets the answer instead of a connection reset, within these bounds.
LINGER_SECONDS, LINGER_BYTES = 2.0, 4 * 1024 * 1024


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 2048
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    header_timeout_seconds: float = 10.0

    @classmethod
    def of(cls, s: ServeSettings) -> ConnectionLimits:
        return cls(s.max_connections, s.max_header_bytes, s.max_headers, s.header_timeout_seconds)


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; the answer is already chosen."""


def _find_limits(app: Any) -> ConnectionLimits:
    """The app's limits, through uvicorn's middleware wrappers (each keeps the next as `.app`)."""
    while app is not None:
        limits = getattr(app, "connection_limits", None)
        if isinstance(limits, ConnectionLimits):
            return limits
        app = getattr(app, "app", None)
    return ConnectionLimits()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header, time and connection-count limits (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = _find_limits(self.app)
        self._in_headers = True  # between a request's first byte (or the connection's start) and its headers' end
        self._raw_bytes = 0  # received while in headers (what httptools may be buffering)
        self._header_bytes = 0  # request line and header fields as parsed
        self._header_count = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str] | None = None
        self._lingering = False  # answered and closing: what still arrives is dropped
        self._discarded = 0

    # -- connection ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._refuse(503, f"more than {self.limits.max_connections} open connections per worker "
                              "(--max-connections)", [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())],
                         linger=False)
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def eof_received(self) -> bool | None:  # type: ignore[override]
        """Half-close: answer a whole request already received, then close (True keeps the transport open)."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.more_body:
            cycle.keep_alive = False
            return True
        return None

    def data_received(self, data: bytes) -> None:
        if self._lingering:  # answered and closing: the rest of the request is dropped
            self._discarded += len(data)
            if self._discarded > LINGER_BYTES:
                self.transport.close()
            return
        if self._in_headers:
            self._raw_bytes += len(data)
        super().data_received(data)
        # Headers still incomplete: httptools holds what arrived; bounded to one read beyond the limit.
        if self._in_headers and self._raw_bytes > self.limits.max_header_bytes and self._refusal is None:
            self._refuse(*self._too_large(self._raw_bytes))

    # -- parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers, self._header_count, self._header_bytes = True, 0, 0
        self._arm()

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refusal = (431, f"more than {self.limits.max_headers} header fields (--max-headers)")
            raise _Refused
        self._count_header_bytes(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers, self._raw_bytes = False, 0
        self._disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_headers = True  # what arrives next is the next request's head

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.transport.is_closing():
            # Answered before the whole body arrived (413, 408, 401, 503): no keep-alive on a
            # half-read request, however slowly the client keeps sending it.
            self._linger()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a parser error, or ours when a limit stopped the parser."""
        if self._refusal is None:
            super().send_400_response(msg)
        else:
            self._refuse(*self._refusal)

    # -- limits --------------------------------------------------------------------------------

    def _count_header_bytes(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > self.limits.max_header_bytes:
            self._refusal = self._too_large(self._header_bytes)
            raise _Refused

    def _too_large(self, size: int) -> tuple[int, str]:
        return 431, (f"{size}+ bytes of request line and headers; the limit is {self.limits.max_header_bytes} "
                     "(--max-header-bytes)")

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.limits.header_timeout_seconds, self._header_timeout)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _header_timeout(self) -> None:
        self._deadline = None
        if not self._in_headers or self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # a pipelined request is slow: close once the current answer is out
        else:
            self._refuse(408, f"the request headers did not arrive within "
                              f"{self.limits.header_timeout_seconds:g} s (--header-timeout-seconds)")

    def _refuse(self, status: int, message: str, extra: list[tuple[bytes, bytes]] | None = None,
                linger: bool = True) -> None:
        """Answer before any request reached the app, and close the connection (after a short linger
        that drains what the client is still sending, so it reads the answer rather than a reset)."""
        self._refusal = (status, message)
        self._disarm()
        if self.transport.is_closing():
            return
        body = json.dumps({"error_code": "REQUEST_REJECTED", "message": message}).encode()
        head = [STATUS_LINE[status], b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode() + b"\r\n", b"connection: close\r\n",
                *(name + b": " + value + b"\r\n" for name, value in extra or [])]
        self.transport.write(b"".join([*head, b"\r\n", body]))
        if linger:
            self._linger()
        else:
            self.transport.close()

    def _linger(self) -> None:
        """Close soon: the client reads the answer and an end of stream, not a reset."""
        self._lingering = True
        self._unset_keepalive_if_required()
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()


def uvicorn_options(settings: ServeSettings) -> dict[str, Any]:
    """uvicorn.run keywords for the limits uvicorn enforces itself, and this protocol for the others."""
    # proxy_headers off: the client address the app sees (auth.py's loopback rule) is the real peer's,
    # never one a forwarded header claims.
    return {"http": GuardedHttpToolsProtocol, "timeout_keep_alive": settings.keep_alive_seconds,
            "limit_concurrency": None, "h11_max_incomplete_event_size": settings.max_header_bytes,
            "proxy_headers": False}
