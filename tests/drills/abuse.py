"""Hostile clients for the serving abuse drills (tests/drills/test_serving_abuse.py), 127.0.0.1 only.

Each builder returns what the issue reproduced (a small Parquet body of millions of rows, a
`dataframe_split` index of 1.5M entries, a 1 MiB X-Request-Id on 2,000 rows, 10,000 headers) and
each sender does one bounded thing over a raw socket or httpx. `python -m tests.drills.abuse URL
SECONDS` runs all of them in a loop for that long in its own process, so the drill's latency probe
does not share a GIL with the attackers.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from workloads.data.sample import generate

TARGET, ID = "churned", "customer_id"
PARQUET = "application/vnd.apache.parquet"


def one_row() -> dict:
    return generate(1, seed=3).drop(columns=[TARGET, ID]).iloc[0].to_dict()


def parquet_bomb(rows: int) -> bytes:
    """`rows` copies of one valid row: dictionary + run-length encoded, a few hundred kB at most."""
    zeros = pa.array(np.zeros(rows, dtype=np.int32))
    columns = {name: pa.DictionaryArray.from_arrays(zeros, pa.array([value])) for name, value in one_row().items()}
    buffer = io.BytesIO()
    pq.write_table(pa.table(columns), buffer, compression="zstd")
    return buffer.getvalue()


def index_bomb(entries: int = 1_500_000) -> bytes:
    row = one_row()
    split = {"columns": list(row), "data": [list(row.values())], "index": list(range(entries))}
    return json.dumps({"dataframe_split": split}).encode()


def rows_body(rows: int) -> bytes:
    row = one_row()
    return json.dumps({"dataframe_split": {"columns": list(row), "data": [list(row.values())] * rows}}).encode()


def raw_request(port: int, head: bytes, body: bytes = b"", timeout: float = 30) -> bytes:
    """One request over its own connection; the whole answer (the server closes or answers)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(head + body)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # refused mid-upload: the answer may still be there
            pass
        return _drain(s)


def post_head(path: str, length: int, content_type: str, headers: list[str] | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: abuse", f"Content-Type: {content_type}", f"Content-Length: {length}",
             *(headers or [])]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def status(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0


def send_body(port: int, body: bytes, content_type: str = "application/json", headers: list[str] | None = None) -> int:
    return status(raw_request(port, post_head("/invocations", len(body), content_type, headers), body))


def header_flood(port: int, count: int = 10_000) -> int:
    return send_body(port, rows_body(1), headers=[f"X-Flood-{i}: {i}" for i in range(count)])


def huge_request_id(port: int, size: int = 1024 * 1024, rows: int = 2000) -> int:
    return send_body(port, rows_body(rows), headers=[f"X-Request-Id: {'r' * size}"])


def idle_connections(port: int, n: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(n)]


def slow_headers(port: int, seconds: float) -> bytes:
    """A header line every second: slowloris. Returns what the server answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=seconds + 30) as s:
        s.sendall(b"POST /invocations HTTP/1.1\r\nHost: abuse\r\n")
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                time.sleep(1)
                s.sendall(b"X-Drip: 1\r\n")
        except OSError:
            pass
        return _drain(s)


def slow_body(port: int, seconds: float) -> bytes:
    """Headers at once, then one body byte a second: the body deadline must end it."""
    with socket.create_connection(("127.0.0.1", port), timeout=seconds + 30) as s:
        s.sendall(post_head("/invocations", 1000, "application/json"))
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:
                s.sendall(b" ")
                time.sleep(1)
        except OSError:
            pass
        return _drain(s)


def _drain(s: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := s.recv(65536):
            out += chunk
    except OSError:
        pass
    return out


def run_all(url: str, seconds: float) -> None:
    """Every attack in its own thread, each at its own pace, until `seconds` have passed.

    Paced and at the lowest CPU priority: the drill measures what the attacks cost the server, not
    how much CPU an attacker on the same machine takes from it (in a cluster the attackers are
    elsewhere). SIGSTOP pauses this process for the drill's quiet phases.
    """
    os.nice(19)
    port = urlsplit(url).port or 80
    bodies = {"parquet": parquet_bomb(10_000_000), "index": index_bomb()}
    stop = time.monotonic() + seconds
    held = idle_connections(port, 300)

    def loop(attack: object, per_second: float) -> None:
        while time.monotonic() < stop:
            started = time.monotonic()
            attack()  # type: ignore[operator]
            time.sleep(max(0.0, 1 / per_second - (time.monotonic() - started)))

    attacks = [(lambda: send_body(port, bodies["parquet"], PARQUET), 5), (lambda: send_body(port, bodies["index"]), 2),
               (lambda: header_flood(port), 5), (lambda: huge_request_id(port), 5),
               *[(lambda: slow_headers(port, 3), 1)] * 5, *[(lambda: slow_body(port, 3), 1)] * 5]
    threads = [threading.Thread(target=loop, args=a, daemon=True) for a in attacks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    for s in held:
        s.close()


if __name__ == "__main__":
    run_all(sys.argv[1], float(sys.argv[2]))
