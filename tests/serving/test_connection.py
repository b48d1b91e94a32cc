"""Connection limits of `mlops serve` (workloads/serving/connection.py) over real sockets.

A real uvicorn server with the guarded httptools protocol runs in a thread on 127.0.0.1, in
front of a tiny ASGI app that carries `connection_limits` like ServingApp does. Each limit is
shown on the wire, next to a control that the same connection shape within the limit works.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from tests.serving.helpers import free_port
from workloads.serving.connection import ConnectionLimits, GuardedHttpToolsProtocol

LIMITS = ConnectionLimits(max_connections=20, max_header_bytes=4096, max_headers=30, header_timeout_seconds=1.0)


class EchoApp:
    """Answers after reading the whole body; `/slow` takes half a second (time to half-close)."""

    connection_limits = LIMITS

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        import asyncio

        if scope["type"] != "http":
            return
        if scope["path"] == "/early":  # answers without reading the body, like a 413 or 408 does
            await send({"type": "http.response.start", "status": 413, "headers": [(b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/slow":
            await asyncio.sleep(0.5)
        answer = b"got %d" % len(body)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[int, list[logging.LogRecord]]]:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("uvicorn.error").addHandler(handler)
    port = free_port()
    config = uvicorn.Config(EchoApp(), host="127.0.0.1", port=port, http=GuardedHttpToolsProtocol,
                            loop="asyncio", lifespan="off", log_level="info", timeout_keep_alive=1)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started
    try:
        yield port, records
    finally:
        srv.should_exit = True
        thread.join(10)
        logging.getLogger("uvicorn.error").removeHandler(handler)


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return s


def read_all(s: socket.socket, timeout: float = 5) -> bytes:
    s.settimeout(timeout)
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def request(path: str = "/", headers: list[str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: t", f"Content-Length: {len(body)}", *(headers or [])]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0


def test_header_count_limit(server: tuple[int, list]) -> None:
    port, _ = server
    for count, expected in ((25, 200), (31, 431), (10_000, 431)):
        with connect(port) as s:
            s.sendall(request(headers=[f"X-H{i}: v" for i in range(count)], body=b"hi"))
            raw = read_all(s)
        assert status_of(raw) == expected, (count, raw[:200])
        if expected == 431:
            assert b"--max-headers" in raw and b"connection: close" in raw


def test_header_size_limit(server: tuple[int, list]) -> None:
    port, _ = server
    for size, expected in ((3000, 200), (5000, 431), (1024 * 1024, 431)):
        with connect(port) as s:
            s.sendall(request(headers=[f"X-Request-Id: {'a' * size}"]))
            raw = read_all(s)
        assert status_of(raw) == expected, (size, raw[:200])
        if expected == 431:
            assert b"--max-header-bytes" in raw


def test_idle_and_slow_header_connections_are_closed(server: tuple[int, list]) -> None:
    port, _ = server
    idle, slow = connect(port), connect(port)
    slow.sendall(b"POST / HTTP/1.1\r\nHost: t\r\n")
    started = time.monotonic()
    for _ in range(4):  # a header line every 0.4 s: never done before the 1 s deadline
        time.sleep(0.4)
        try:
            slow.sendall(b"X-Drip: 1\r\n")
        except OSError:
            break
    raw_idle, raw_slow = read_all(idle), read_all(slow)
    assert status_of(raw_idle) == 408 and status_of(raw_slow) == 408, (raw_idle, raw_slow)
    assert b"--header-timeout-seconds" in raw_slow
    assert time.monotonic() - started < 4
    idle.close()
    slow.close()


def test_keep_alive_requests_each_get_their_own_header_deadline(server: tuple[int, list]) -> None:
    port, _ = server
    with connect(port) as s:
        for _ in range(3):  # 3 requests over 1.8 s on one connection: only each request's headers are timed
            s.sendall(request(body=b"abc"))
            s.settimeout(5)
            raw = b""
            while not raw.endswith(b"got 3"):
                raw += s.recv(4096)
            assert status_of(raw) == 200
            time.sleep(0.6)


def test_connection_cap_refuses_with_retry_after(server: tuple[int, list]) -> None:
    port, _ = server
    held = [connect(port) for _ in range(LIMITS.max_connections)]
    time.sleep(0.2)
    try:
        with connect(port) as extra:
            raw = read_all(extra)
        assert status_of(raw) == 503 and b"retry-after: 1" in raw and b"--max-connections" in raw
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    with connect(port) as s:  # the slots came back
        s.sendall(request(body=b"x"))
        assert status_of(read_all(s)) == 200


def test_half_closed_client_gets_its_answer_and_nothing_is_logged(server: tuple[int, list]) -> None:
    port, records = server
    before = len(records)
    for path in ("/", "/slow"):
        with connect(port) as s:
            s.sendall(request(path, body=b"hello"))
            s.shutdown(socket.SHUT_WR)  # done sending; still reading
            raw = read_all(s)
        assert status_of(raw) == 200 and raw.endswith(b"got 5"), raw
    with connect(port) as s:  # half-closed mid-body: nothing to answer, closed quietly
        s.sendall(request(body=b"hello")[:-2])
        s.shutdown(socket.SHUT_WR)
        assert read_all(s) == b""
    time.sleep(0.7)
    errors = [r.getMessage() for r in records[before:] if r.levelno >= logging.ERROR]
    assert not errors, errors


def test_a_half_read_request_is_not_kept_alive(server: tuple[int, list]) -> None:
    """Answered before its body arrived: the connection ends soon, however the client keeps dripping."""
    port, _ = server
    with connect(port) as s:
        s.sendall(request("/early", body=b"x" * 1000)[:-990])
        started = time.monotonic()
        answer = b""
        s.settimeout(0.5)
        while time.monotonic() - started < 8:
            try:
                s.sendall(b"x")
                chunk = s.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
        assert status_of(answer) == 413
        assert time.monotonic() - started < 5  # closed after the linger, not after 8 s of dripping
