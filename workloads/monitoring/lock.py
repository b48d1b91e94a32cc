"""At most one retraining per endpoint, and not more often than the cooldown allows.

Both live in the capture bucket under `monitoring/<endpoint>/` (layout.py): the lock object
and the cooldown record (`last_retrain.json`, the last retraining's time and state).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from workloads import layout

log = logging.getLogger(__name__)
CONFLICT = ("PreconditionFailed", "ConditionalRequestConflict")  # what S3 answers a lost conditional put


class RetrainLock:
    """An S3 object created with `If-None-Match: *`.

    S3 (and moto) refuse the put when the object exists, so exactly one of two concurrent
    monitors gets it. A lock older than `stale_after` (a crashed monitor) is taken over with
    `If-Match` on the stale object's ETag, so two monitors cannot both take it over either.
    """

    def __init__(self, s3: Any, bucket: str, endpoint: str, stale_after: timedelta):
        self.s3, self.bucket, self.stale_after = s3, bucket, stale_after
        self.key = layout.retrain_lock_key(endpoint)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.etag: str | None = None
        self.holder: dict[str, Any] | None = None

    def acquire(self) -> bool:
        try:
            self.etag = self._put(IfNoneMatch="*")
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in CONFLICT:
                raise
        try:
            current = self.s3.get_object(Bucket=self.bucket, Key=self.key)
        except self.s3.exceptions.NoSuchKey:
            return self.acquire()  # released in between: try once more
        self.holder = json.loads(current["Body"].read())
        since = datetime.fromisoformat(self.holder["since"])
        if datetime.now(UTC) - since < self.stale_after:
            return False
        try:
            self.etag = self._put(IfMatch=current["ETag"])
        except ClientError:
            return False
        log.warning("took over a stale retraining lock held by %s since %s", self.holder["owner"], since)
        return True

    def release(self) -> None:
        try:
            self.s3.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
        except (BotoCoreError, ClientError) as exc:  # it goes stale on its own; say so
            log.warning("could not release the retraining lock %s: %s", self.key, exc)

    def _put(self, **condition: str) -> str:
        body = json.dumps({"owner": self.owner, "since": datetime.now(UTC).isoformat()}).encode()
        return str(self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=body, **condition)["ETag"])


class CooldownRecord:
    """The last retraining of an endpoint: when it started, and how it went."""

    def __init__(self, s3: Any, bucket: str, endpoint: str):
        self.s3, self.bucket, self.key = s3, bucket, layout.last_retrain_key(endpoint)

    def last(self) -> dict[str, Any] | None:
        try:
            body = self.s3.get_object(Bucket=self.bucket, Key=self.key)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None
        return dict(json.loads(body))

    def cooling_down(self, hours: float, now: datetime | None = None) -> str | None:
        """Why the endpoint may not retrain yet, or None when it may."""
        last = self.last()
        if last and (now or datetime.now(UTC)) - datetime.fromisoformat(last["time"]) < timedelta(hours=hours):
            return f"cooldown: last retraining at {last['time']} (< {hours} h ago)"
        return None

    def write(self, record: dict[str, Any]) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self.key, Body=json.dumps(record, default=str).encode())
