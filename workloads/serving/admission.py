"""Admission: how many scoring requests, and how many of their bytes, one worker holds at once.

Per-request limits (limits.py) bound one request; under load many of them wait together for
the predictor, each holding its body and its decoded values. A worker admits a request while it
has fewer than `max_requests` in flight and their bytes (bodies as they arrive, then the decoded
estimate) stay within `max_bytes`; beyond that it answers 503 with Retry-After at once, so
overload costs the client a retry, not the worker its memory or everyone their latency. The
first request in flight is always admitted up to the per-request limits.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from workloads.serving.protocol import Reject

RETRY_AFTER_SECONDS = 1  # what a 503 tells clients (asgi.send_answer)


def overloaded(message: str) -> Reject:
    return Reject(503, json.dumps({"error_code": "TEMPORARILY_UNAVAILABLE", "message": message}))


@dataclass
class Ticket:
    """One admitted request: the bytes it holds, released when it leaves."""

    admission: Admission
    held: int = 0
    decoded: int = 0  # the largest decoded-size estimate so far (limits.py), part of `held`

    def reserve_decoded(self, nbytes: float) -> None:
        """Hold what the request decodes to (estimates grow as parsing learns more)."""
        if nbytes > self.decoded:
            self.reserve(int(nbytes) - self.decoded)
            self.decoded = int(nbytes)

    def reserve(self, nbytes: int) -> None:
        """Hold `nbytes` more for this request, or 503 when the worker's budget would overflow."""
        a = self.admission
        if a.bytes_in_flight + nbytes > a.max_bytes and a.bytes_in_flight > self.held:
            raise overloaded(f"the worker holds {a.bytes_in_flight} bytes of requests in flight; the limit is "
                             f"{a.max_bytes} (--max-inflight-bytes): retry after {RETRY_AFTER_SECONDS} s")
        a.bytes_in_flight += nbytes
        self.held += nbytes


@dataclass
class Admission:
    """Counts of one worker's requests in flight (event-loop only: no locks)."""

    max_requests: int
    max_bytes: int
    requests_in_flight: int = 0
    bytes_in_flight: int = 0

    @contextmanager
    def ticket(self) -> Iterator[Ticket]:
        if self.requests_in_flight >= self.max_requests:
            raise overloaded(f"{self.requests_in_flight} requests in flight; the limit is {self.max_requests} "
                             f"per worker (--max-concurrent-requests): retry after {RETRY_AFTER_SECONDS} s")
        ticket = Ticket(self)
        self.requests_in_flight += 1
        try:
            yield ticket
        finally:
            self.requests_in_flight -= 1
            self.bytes_in_flight -= ticket.held
