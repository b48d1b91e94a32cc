"""The bins capture summarises against, per served model version, looked up off the request path.

The monitor caches each reference profile's bins in the capture bucket
(`monitoring/profile.py:bins_key`), keyed like the profiles: by the dataset the version was
trained on (its lineage tags) and its feature names, and for the prediction baseline by the
version itself. Until the monitor has run once for that version there are no bins: capture
writes its Parquet without a summary and the monitor reads those files itself (in bounded
batches). A missing or unreadable document is asked for again after `retry_seconds`.

`get` never waits: a lookup (the registry, then S3) runs on a thread of its own, so a registry
or store that hangs delays summaries, never the flush (capture's buffer is bounded).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from workloads.capture.summary import Bins

log = logging.getLogger(__name__)
RETRY_SECONDS = 60.0
MAX_VERSIONS = 4  # versions remembered (a reload swaps one in at a time)


class BinsSource:
    """`get(model, version, features)`: the version's bins, or None while there are none (yet)."""

    def __init__(self, s3: Any, bucket: str, registry: Callable[[], Any], *,
                 retry_seconds: float = RETRY_SECONDS, clock: Callable[[], float] = time.monotonic,
                 start: Callable[[Callable[[], None]], None] | None = None) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._registry = registry  # () -> MlflowClient, created on first use
        self._client: Any = None
        self._retry = retry_seconds
        self._clock = clock
        self._start = start or _in_thread  # tests pass `lambda lookup: lookup()`
        self._known: dict[tuple[str, str], tuple[float, Bins | None]] = {}
        self._pending: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def get(self, model: str, version: str, features: list[str]) -> Bins | None:
        """The bins known now; starts a lookup when there are none and the last is `retry_seconds` old."""
        key = (model, version)
        with self._lock:
            at, bins = self._known.get(key, (None, None))
            due = bins is None and key not in self._pending and (at is None or self._clock() - at >= self._retry)
            if due:
                self._pending.add(key)
        if due:
            self._start(lambda: self._lookup(model, version, list(features)))
            with self._lock:
                bins = self._known.get(key, (None, None))[1]
        return bins

    def _lookup(self, model: str, version: str, features: list[str]) -> None:
        try:
            bins = self._load(model, version, features)
        except Exception as exc:  # registry or store unreachable: capture goes on without summaries
            log.info("capture: no profile bins for %s v%s yet (%s)", model, version, exc)
            bins = None
        with self._lock:
            self._pending.discard((model, version))
            self._known.pop((model, version), None)
            self._known[(model, version)] = (self._clock(), bins)
            if len(self._known) > MAX_VERSIONS:
                self._known.pop(next(iter(self._known)))  # the least recently looked up

    def _load(self, model: str, version: str, features: list[str]) -> Bins | None:
        from workloads.monitoring.profile import bins_key, feature_profile_key, prediction_profile_key
        from workloads.monitoring.reference import Champion

        if self._client is None:
            self._client = self._registry()
        tags = dict(self._client.get_model_version(model, version).tags)
        if "mlops.dataset.uri" not in tags and "mlops.dataset.digest" not in tags:
            return None  # not trained by `mlops train`: the monitor has no reference for it either
        digest = Champion(name=model, version=version, run_id=None, tags=tags, features=features).dataset_digest
        features_doc = self._document(bins_key(feature_profile_key(digest, features)))
        if features_doc is None:
            return None
        prediction_doc = self._document(bins_key(prediction_profile_key(digest, model, version)))
        return Bins.from_documents(features_doc, prediction_doc)

    def _document(self, key: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read())
        except self._s3.exceptions.NoSuchKey:
            return None


def _in_thread(lookup: Callable[[], None]) -> None:
    threading.Thread(target=lookup, name="capture-profile-bins", daemon=True).start()
