"""An in-memory stand-in for the S3 calls capture and the window reader make (no server, no moto).

put_object, get_object (with Range), list_objects_v2 through a paginator, and `exceptions.NoSuchKey`;
it counts GETs and the bytes they returned, so tests can say what a read cost.
"""

from __future__ import annotations

import io
import re
import threading
from typing import Any


class _NoSuchKey(Exception):
    pass


class _Exceptions:
    NoSuchKey = _NoSuchKey


class MemoryS3:
    exceptions = _Exceptions

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.gets = 0
        self.bytes_read = 0
        self.read_keys: set[str] = set()
        self._lock = threading.Lock()

    def put_object(self, Bucket: str, Key: str, Body: bytes) -> None:  # noqa: N803 - boto3's names
        self.objects[Key] = bytes(Body)

    def get_object(self, Bucket: str, Key: str, Range: str | None = None) -> dict[str, Any]:  # noqa: N803
        if Key not in self.objects:
            raise _NoSuchKey(Key)
        data = self.objects[Key]
        if Range is not None:
            first, last = (int(x) for x in re.fullmatch(r"bytes=(\d+)-(\d+)", Range).groups())
            data = data[first:last + 1]
        with self._lock:
            self.gets += 1
            self.bytes_read += len(data)
            self.read_keys.add(Key)
        return {"Body": io.BytesIO(data), "ContentLength": len(data)}

    def get_paginator(self, name: str) -> Any:
        assert name == "list_objects_v2"
        return self

    def paginate(self, Bucket: str, Prefix: str = "") -> list[dict[str, Any]]:  # noqa: N803
        keys = sorted(k for k in self.objects if k.startswith(Prefix))
        pages = [keys[i:i + 1000] for i in range(0, len(keys), 1000)] or [[]]
        return [{"Contents": [{"Key": k, "Size": len(self.objects[k])} for k in page]} for page in pages]
