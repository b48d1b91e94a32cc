"""The capture writer's warm-up sends no S3 request: HeadBucket is authorized as s3:ListBucket,
which the serving role does not have. It still says early when the store is unreachable."""

from __future__ import annotations

import logging
import socket
from typing import Any

import boto3
import pytest

from workloads.capture.writer import CaptureWriter


def writer_for(port: int, sent: list[str]) -> CaptureWriter:
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                      aws_access_key_id="k", aws_secret_access_key="s")

    def record(request: Any, **_: Any) -> None:
        sent.append(f"{request.method} {request.url}")

    s3.meta.events.register("before-send", record)
    return CaptureWriter(s3, "captures-bucket", "churn")


def test_warm_up_sends_no_s3_request(caplog: pytest.LogCaptureFixture) -> None:
    sent: list[str] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        writer = writer_for(listener.getsockname()[1], sent)
        with caplog.at_level(logging.WARNING, "workloads.capture.writer"):
            writer._warm_up()
    assert sent == []
    assert not caplog.records  # reachable: nothing to say


def test_warm_up_says_when_the_store_is_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, never listening: connections are refused
        sent: list[str] = []
        with caplog.at_level(logging.WARNING, "workloads.capture.writer"):
            writer_for(port, sent)._warm_up()
    assert sent == []
    assert "not reachable yet" in caplog.text
