"""The local S3 store's objects on disk: `<workdir>/s3/manifest.json` + `objects/<sha256>`.

moto's server keeps state in memory only. Its recorder (`MOTO_ENABLE_RECORDING`) logs every
request, reads included, and replays the whole history on start, so it grows without bound
and slows every restart. Instead `save` copies the current version of every object through
the S3 API (incrementally, by ETag) and `restore` uploads them into a fresh server. Object
version history is not kept across restarts.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# bucket -> key -> {"file", "etag", "content_type", "metadata"}
Manifest = dict[str, dict[str, dict[str, Any]]]
WORKERS = 8  # below botocore's default pool of 10 connections


class Snapshot:
    """Save and restore every object of one S3 store (`s3`: a boto3 client for it)."""

    def __init__(self, directory: Path, s3: Any) -> None:
        self.directory = directory
        self.objects = directory / "objects"
        self.s3 = s3

    def manifest(self) -> Manifest:
        path = self.directory / "manifest.json"
        return json.loads(path.read_text())["buckets"] if path.exists() else {}

    def _write_manifest(self, buckets: Manifest) -> None:
        path = self.directory / "manifest.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": 1, "buckets": buckets}, indent=1, sort_keys=True))
        tmp.replace(path)

    def save(self) -> None:
        """Copy the current version of every object to objects/<sha256(bucket/key)>.

        File names are hashes so no key (`../x`, `/abs`) can escape the directory; objects
        whose ETag is unchanged since the last save or restore are not downloaded again.
        """
        self.objects.mkdir(parents=True, exist_ok=True)
        current, todo = self._unchanged(self.manifest())
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            for bucket, key, entry in pool.map(self._download, todo):
                current[bucket][key] = entry
        self._write_manifest(current)
        keep = {e["file"] for objs in current.values() for e in objs.values()}
        for path in self.objects.iterdir():
            if path.name not in keep:
                path.unlink()

    def _unchanged(self, previous: Manifest) -> tuple[Manifest, list[tuple[str, str, str]]]:
        """Entries still valid from `previous`, and (bucket, key, etag) of the objects to download."""
        current: Manifest = {}
        todo: list[tuple[str, str, str]] = []
        for bucket in (b["Name"] for b in self.s3.list_buckets().get("Buckets", [])):
            current[bucket] = {}
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                for obj in page.get("Contents", []):
                    key, etag = obj["Key"], obj["ETag"]
                    known = previous.get(bucket, {}).get(key)
                    if known and known["etag"] == etag and (self.objects / known["file"]).exists():
                        current[bucket][key] = known
                    else:
                        todo.append((bucket, key, etag))
        return current, todo

    def _download(self, item: tuple[str, str, str]) -> tuple[str, str, dict[str, Any]]:
        bucket, key, etag = item
        name = hashlib.sha256(f"{bucket}/{key}".encode()).hexdigest()
        response = self.s3.get_object(Bucket=bucket, Key=key)
        tmp = self.objects / f"{name}.tmp"
        with open(tmp, "wb") as out:
            shutil.copyfileobj(response["Body"], out, 1 << 20)
        tmp.replace(self.objects / name)
        entry = {"file": name, "etag": etag, "content_type": response.get("ContentType"),
                 "metadata": response.get("Metadata", {})}
        return bucket, key, entry

    def restore(self, create_bucket: Callable[[str], None], on_status: Callable[[str], None]) -> None:
        """Upload the last save into the (empty) store; `create_bucket(name)` makes missing buckets."""
        manifest = self.manifest()
        if not manifest:
            return
        items = [(b, k, e) for b, objs in manifest.items() for k, e in objs.items()]
        on_status(f"restoring {len(items)} S3 objects from the workdir")
        existing = {b["Name"] for b in self.s3.list_buckets().get("Buckets", [])}
        for bucket in manifest:
            if bucket not in existing:
                create_bucket(bucket)
        with ThreadPoolExecutor(max_workers=WORKERS) as pool:
            for bucket, key, etag in pool.map(self._upload, items):
                manifest[bucket][key]["etag"] = etag  # so the next save skips unchanged objects
        self._write_manifest(manifest)

    def _upload(self, item: tuple[str, str, dict[str, Any]]) -> tuple[str, str, str]:
        bucket, key, entry = item
        extra = {"Metadata": entry.get("metadata") or {}}
        if entry.get("content_type"):
            extra["ContentType"] = entry["content_type"]
        with open(self.objects / entry["file"], "rb") as body:
            response = self.s3.put_object(Bucket=bucket, Key=key, Body=body, **extra)
        return bucket, key, response["ETag"]
