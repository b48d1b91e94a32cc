"""Monitoring an endpoint: drift and decay against the champion's training data, then alert and retrain.

One `monitor(...)` call, in order:
1. open an MLflow run in experiment `monitoring/<endpoint>` (tag `mlops.monitor.state=running`);
2. resolve `models:/<model>@<alias>` and its lineage tags; load the reference dataset from
   `mlops.dataset.uri` and its drift profile (built once, cached next to the dataset);
3. load the captured window (last N hours by `dt=/hour=` partitions and `_ts`, or last N records);
4. check it: empty or below `min_rows` -> `insufficient_data`; a feature column missing or of
   the wrong kind -> `data_integrity_failure`; else compare (workloads/drift.py) and, with
   labels, score the champion on the labelled rows against its holdout metric;
5. log metrics, params, plots, an HTML report and `summary.json` to the run;
6. act: alert on drift, decay or integrity failure; retrain on drift or decay (reference plus
   labelled captured rows), under a lock object in the capture bucket and a cooldown;
7. only then tag `mlops.monitor.status` and end the run FINISHED. Any error before that ends the
   run FAILED with the message in `mlops.monitor.error`, and nothing is alerted or retrained.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import logging
import math
import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from workloads.environment import StackOutputs
from workloads.errors import MlopsError
from workloads.monitoring import retrain_jobs
from workloads.monitoring.alerts import AlertOutcome, send_alert
from workloads.monitoring.drift import PREDICTION, DriftReport, DriftThresholds, ReferenceProfile, compare

log = logging.getLogger(__name__)

Status = Literal["ok", "drift", "performance_decay", "insufficient_data", "data_integrity_failure"]
EXIT_CODES: dict[str, int] = {  # the CLI's exit code per status; 1 = the monitor itself failed
    "ok": 0, "drift": 0, "performance_decay": 0, "insufficient_data": 0, "data_integrity_failure": 3,
}
# Metrics whose scale is unbounded: their drop is measured relative to the holdout value.
RELATIVE_DROP_METRICS = {"rmse", "mae", "log_loss"}


class MonitorError(MlopsError, RuntimeError):
    kind = "monitoring failed, nothing alerted or retrained"

    """Monitoring could not complete (storage or registry unreachable, no champion, ...)."""


class MonitorConfig(BaseModel):
    """Thresholds; the same names as the stack config `workloads.monitoring`."""

    window_hours: float | None = Field(24, gt=0)
    window_records: int | None = Field(None, ge=1)  # when set, replaces window_hours
    min_rows: int = Field(200, ge=1)
    min_labelled_rows: int = Field(50, ge=1)
    drift_share: float = Field(0.3, gt=0, le=1)
    psi_threshold: float = Field(0.2, gt=0)
    metric_drop: float = Field(0.05, ge=0)
    cooldown_hours: float = Field(6, ge=0)
    lock_stale_hours: float = Field(2, gt=0)  # a retraining lock older than this is taken over
    alert_webhook: str | None = None
    alert_sns_topic_arn: str | None = None
    retrain: bool = True


class Performance(BaseModel):
    metric: str
    holdout: float
    current: float
    drop: float  # positive = worse; relative for rmse/mae/log_loss
    labelled_rows: int
    decayed: bool


class RetrainOutcome(BaseModel):
    triggered: bool
    reason: str
    version: str | None = None
    decision: str | None = None
    run_id: str | None = None
    error: str | None = None


class MonitorResult(BaseModel):
    status: Status
    reasons: list[str]
    endpoint: str
    model_name: str
    model_version: str
    alias: str
    window: dict[str, Any]
    drift_detected: bool = False
    performance_decayed: bool = False
    drift: DriftReport | None = None
    performance: Performance | None = None
    alert: AlertOutcome | None = None
    retraining: RetrainOutcome | None = None
    run_id: str
    experiment: str
    report_uri: str | None = None
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        code = EXIT_CODES[self.status]
        return 1 if code == 0 and self.retraining and self.retraining.error else code


# --- the captured window --------------------------------------------------------------------


def _keys(client: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".parquet")]
    return keys


def _partition_hour(key: str) -> datetime | None:
    """The hour a capture file belongs to, from its `dt=YYYY-MM-DD/hour=HH/` path."""
    parts = dict(p.split("=", 1) for p in key.split("/") if p.startswith(("dt=", "hour=")))
    try:
        return datetime.strptime(f"{parts['dt']} {parts['hour']}", "%Y-%m-%d %H").replace(tzinfo=UTC)
    except (KeyError, ValueError):
        return None


def load_window(
    outputs: StackOutputs, endpoint: str, *, hours: float | None = None, records: int | None = None,
    now: datetime | None = None,
) -> pd.DataFrame:
    """Captured rows of `endpoint`: the last `records` rows, else those of the last `hours`."""
    now = now or datetime.now(UTC)
    client = outputs.s3_client()
    prefix = f"captures/{endpoint}/"
    dated = [(h, k) for k in _keys(client, outputs.capture_bucket, prefix) if (h := _partition_hour(k))]
    dated.sort(reverse=True)  # newest partitions first
    since = now - timedelta(hours=hours) if hours and records is None else None
    if since is not None:
        floor = since.replace(minute=0, second=0, microsecond=0)
        dated = [(h, k) for h, k in dated if floor <= h <= now]

    def read(key: str) -> pd.DataFrame:
        body = client.get_object(Bucket=outputs.capture_bucket, Key=key)["Body"].read()
        return pd.read_parquet(io.BytesIO(body))

    frames: list[pd.DataFrame] = []
    with ThreadPoolExecutor(8) as pool:
        if records is None:
            frames = list(pool.map(read, [k for _, k in dated]))
        else:  # newest hours first until enough rows
            n = 0
            for hour in sorted({h for h, _ in dated}, reverse=True):
                batch = list(pool.map(read, [k for h, k in dated if h == hour]))
                frames += batch
                n += sum(len(f) for f in batch)
                if n >= records:
                    break
    if not frames:
        return pd.DataFrame()
    window = pd.concat(frames, ignore_index=True)
    if "_ts" in window.columns:
        window["_ts"] = pd.to_datetime(window["_ts"], utc=True)
        window = window.sort_values(["_ts", "_row"] if "_row" in window.columns else ["_ts"], kind="stable")
        if since is not None:
            window = window[(window["_ts"] >= since) & (window["_ts"] <= now)]
    if records is not None:
        window = window.tail(records)
    return window.reset_index(drop=True)


def load_labels(source: str, outputs: StackOutputs) -> pd.DataFrame:
    """Ground truth: a CSV/Parquet file, or every such file under an s3:// prefix (ending in `/`)."""
    from urllib.parse import urlparse

    from workloads.data import dataset as datasets

    if source.startswith("s3://") and not source.lower().endswith((".csv", ".csv.gz", ".parquet", ".pq")):
        url = urlparse(source)
        client = outputs.s3_client()
        keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=url.netloc, Prefix=url.path.lstrip("/")) for o in page.get("Contents", [])
            if o["Key"].lower().endswith((".csv", ".csv.gz", ".parquet", ".pq"))]
        frames = [datasets.load(f"s3://{url.netloc}/{k}", outputs) for k in keys]
        labels = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["request_id", "label"])
    else:
        labels = datasets.load(source, outputs)
    missing = {"request_id", "label"} - set(labels.columns)
    if missing:
        raise MonitorError(f"labels {source}: missing column(s) {sorted(missing)}; expected request_id, [row,] label")
    labels = labels.assign(
        request_id=labels["request_id"].astype(str),
        row=labels["row"].fillna(0).astype(int) if "row" in labels.columns else 0,
    )
    # the newest label wins when one arrives twice
    return labels.drop_duplicates(["request_id", "row"], keep="last")[["request_id", "row", "label"]]


# --- the retraining lock and cooldown -------------------------------------------------------


class RetrainLock:
    """At most one retraining per endpoint: an S3 object created with `If-None-Match: *`.

    S3 (and moto) refuse the put when the object exists, so exactly one of two concurrent
    monitors gets it. A lock older than `stale_after` (a crashed monitor) is taken over with
    `If-Match` on the stale object's ETag, so two monitors cannot both take it over either.
    """

    def __init__(self, client: Any, bucket: str, endpoint: str, stale_after: timedelta):
        self.client, self.bucket, self.stale_after = client, bucket, stale_after
        self.key = f"monitoring/{endpoint}/retrain.lock"
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.etag: str | None = None
        self.holder: dict[str, Any] | None = None

    def _body(self) -> bytes:
        return json.dumps({"owner": self.owner, "since": datetime.now(UTC).isoformat()}).encode()

    def acquire(self) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.etag = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(),
                                               IfNoneMatch="*")["ETag"]
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise
        try:
            current = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except self.client.exceptions.NoSuchKey:
            return self.acquire()  # released in between: try once more
        self.holder = json.loads(current["Body"].read())
        since = datetime.fromisoformat(self.holder["since"])
        if datetime.now(UTC) - since < self.stale_after:
            return False
        try:
            self.etag = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(),
                                               IfMatch=current["ETag"])["ETag"]
            log.warning("took over a stale retraining lock held by %s since %s", self.holder["owner"], since)
            return True
        except ClientError:
            return False

    def release(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
        except (BotoCoreError, ClientError) as exc:  # it goes stale on its own; say so
            log.warning("could not release the retraining lock %s: %s", self.key, exc)


def _last_retrain(client: Any, bucket: str, endpoint: str) -> dict[str, Any] | None:
    try:
        body = client.get_object(Bucket=bucket, Key=f"monitoring/{endpoint}/last_retrain.json")["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    return json.loads(body)


def _record_retrain(client: Any, bucket: str, endpoint: str, record: dict[str, Any]) -> None:
    client.put_object(Bucket=bucket, Key=f"monitoring/{endpoint}/last_retrain.json",
                      Body=json.dumps(record, default=str).encode())


# --- monitoring -----------------------------------------------------------------------------


class _Champion(BaseModel):
    name: str
    version: str
    run_id: str | None
    tags: dict[str, str]
    features: list[str]


def _champion(client: Any, name: str, alias: str) -> _Champion:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise MonitorError(f"models:/{name}@{alias} does not resolve: {exc.message}") from None
    tags = dict(mv.tags)
    missing = [t for t in ("mlops.dataset.uri", "mlops.target", "mlops.task") if t not in tags]
    if missing:
        raise MonitorError(f"{name} v{mv.version} lacks lineage tag(s) {missing}: was it registered by `mlops train`?")
    signature = mlflow.models.get_model_info(f"models:/{name}/{mv.version}").signature
    if signature is None:
        raise MonitorError(f"{name} v{mv.version} has no signature: its input columns are unknown")
    return _Champion(name=name, version=str(mv.version), run_id=mv.run_id, tags=tags,
                     features=list(signature.inputs.input_names()))


def _cached_profile(
    outputs: StackOutputs, client: Any, key: str, build: Callable[[], ReferenceProfile],
) -> ReferenceProfile:
    """The profile stored at `key` in the data bucket, built and stored on first use."""
    try:
        return ReferenceProfile.from_bytes(client.get_object(Bucket=outputs.data_bucket, Key=key)["Body"].read())
    except client.exceptions.NoSuchKey:
        profile = build()
        client.put_object(Bucket=outputs.data_bucket, Key=key, Body=profile.to_bytes())
        return profile


def _integrity_problems(window: pd.DataFrame, profile: ReferenceProfile) -> list[str]:
    problems = [f"column {c!r} is missing" for c in profile.columns if c not in window.columns]
    for name in profile.numeric:
        if name in window.columns and not (pd.api.types.is_numeric_dtype(window[name])
                                           or window[name].isna().all()):
            problems.append(f"column {name!r} should be numeric, got {window[name].dtype}")
    return problems


def _performance(
    champ: _Champion, window: pd.DataFrame, labels: pd.DataFrame, config: MonitorConfig,
) -> tuple[Performance | None, pd.DataFrame, list[str]]:
    """The champion's metric on the labelled window rows (and those rows, for retraining)."""
    import mlflow

    from workloads.training.job import METRICS, score

    joined = window.assign(_request_id=window["_request_id"].astype(str), _row=window["_row"].astype(int)).merge(
        labels, left_on=["_request_id", "_row"], right_on=["request_id", "row"], how="inner")
    notes = []
    metric_name, holdout = champ.tags.get("mlops.metric"), champ.tags.get("mlops.metric.value")
    if len(joined) < config.min_labelled_rows:
        notes.append(f"{len(joined)} labelled rows in the window, below {config.min_labelled_rows}: no metric")
        return None, joined, notes
    if metric_name not in METRICS or holdout is None:
        notes.append(f"the champion has no usable mlops.metric/mlops.metric.value tags ({metric_name!r})")
        return None, joined, notes
    metric = METRICS[metric_name]
    model = mlflow.sklearn.load_model(f"models:/{champ.name}/{champ.version}")
    y = joined["label"]
    n_classes = int(y.nunique()) if metric.task == "classification" else 0
    try:
        current = score(model, joined[champ.features], y, metric, max(n_classes, 2))
    except ValueError as exc:  # e.g. one class only in the labelled rows: roc_auc is undefined
        notes.append(f"{metric_name} undefined on the labelled rows: {exc}")
        return None, joined, notes
    reference = float(holdout)
    worse = reference - current if metric.greater_is_better else current - reference
    drop = worse / abs(reference) if metric_name in RELATIVE_DROP_METRICS and reference else worse
    return Performance(metric=metric_name, holdout=reference, current=current, drop=drop,
                       labelled_rows=len(joined), decayed=drop > config.metric_drop), joined, notes


def _newest_data(reference: pd.DataFrame, labelled: pd.DataFrame, champ: _Champion) -> pd.DataFrame:
    """Reference plus labelled captured rows, in the reference's columns.

    Columns the endpoint never saw (ids such as customer_id, excluded from the features) get
    the capture's `<request_id>/<row>` when they hold strings, else stay missing.
    """
    target = champ.tags["mlops.target"]
    rows = labelled[champ.features].copy()
    rows[target] = labelled["label"].to_numpy()
    for column in reference.columns:
        if column not in rows.columns:
            if pd.api.types.is_string_dtype(reference[column]) or reference[column].dtype == object:
                rows[column] = (labelled["_request_id"].astype(str) + "/" + labelled["_row"].astype(str)).to_numpy()
            else:
                rows[column] = np.nan
    rows = rows[list(reference.columns)].astype(reference.dtypes.to_dict(), errors="ignore")
    return pd.concat([reference, rows], ignore_index=True)


def monitor(
    endpoint: str, model_name: str, outputs: StackOutputs, *, alias: str = "champion",
    config: MonitorConfig | None = None, labels: str | None = None, retrain_spec: Path | None = None,
    workdir: Path = Path(".mlops/local"), now: datetime | None = None,
) -> MonitorResult:
    """Monitor `endpoint` once; see the module docstring. Raises MonitorError when it cannot finish."""
    import mlflow
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    started = time.monotonic()
    config = config or MonitorConfig()
    now = now or datetime.now(UTC)
    outputs.apply_env()
    mlflow.set_tracking_uri(outputs.tracking_uri)
    client = MlflowClient()
    experiment = f"monitoring/{endpoint}"
    experiment_id = _experiment_id(client, experiment)
    run = client.create_run(experiment_id, run_name=f"monitor-{endpoint}-{now:%Y%m%dT%H%M%S}",
                            tags={"mlops.monitor.state": "running", "mlops.endpoint": endpoint})
    run_id = run.info.run_id
    try:
        s3 = outputs.s3_client()
        champ = _champion(client, model_name, alias)
        client.log_batch(run_id, params=[Param(k, str(v)) for k, v in {
            "endpoint": endpoint, "model": model_name, "alias": alias, "model_version": champ.version,
            **config.model_dump(exclude={"alert_webhook", "alert_sns_topic_arn"}),
        }.items()])
        window = load_window(outputs, endpoint, hours=config.window_hours, records=config.window_records, now=now)
        span = {"rows": len(window), "hours": config.window_hours if config.window_records is None else None,
                "records": config.window_records, "end": now.isoformat()}
        if len(window) and "_ts" in window.columns:
            span |= {"first": window["_ts"].min().isoformat(), "last": window["_ts"].max().isoformat()}
        result = MonitorResult(status="ok", reasons=[], endpoint=endpoint, model_name=model_name,
                               model_version=champ.version, alias=alias, window=span, run_id=run_id,
                               experiment=experiment)
        labelled = pd.DataFrame()
        reference = pd.DataFrame()
        drift_profile: ReferenceProfile | None = None
        if len(window) == 0 or len(window) < config.min_rows:
            result.status = "insufficient_data"
            result.reasons.append(f"{len(window)} captured rows in the window, below min_rows={config.min_rows}")
        else:
            from workloads.data import dataset as datasets

            uri = champ.tags["mlops.dataset.uri"]
            reference = datasets.load(uri, outputs)
            base = uri.removeprefix(f"s3://{outputs.data_bucket}/").rsplit("/", 1)[0]
            features_hash = hashlib.sha256("\0".join(champ.features).encode()).hexdigest()[:12]
            drift_profile = _cached_profile(
                outputs, s3, f"{base}/profile-{features_hash}.npz",
                lambda: ReferenceProfile.build(reference[champ.features], meta={"dataset.uri": uri}),
            )
            problems = _integrity_problems(window, drift_profile)
            if problems:
                result.status = "data_integrity_failure"
                result.reasons += problems
            else:
                prediction_profile = _cached_profile(
                    outputs, s3, f"{base}/predictions-{model_name}-v{champ.version}.npz",
                    lambda: _prediction_profile(champ, reference),
                )
                thresholds = DriftThresholds(psi_threshold=config.psi_threshold)
                report = compare(drift_profile, window, thresholds=thresholds,
                                 prediction_profile=prediction_profile)
                result.drift = report
                if report.drift_share >= config.drift_share:
                    result.drift_detected = True
                    result.reasons.append(f"{report.n_drifted}/{len(report.features)} features drifted "
                                          f"(share {report.drift_share:.2f} >= {config.drift_share})")
                psi_hits = [f.name for f in report.features if f.psi is not None and f.psi >= config.psi_threshold]
                if psi_hits:
                    result.drift_detected = True
                    result.reasons.append(f"PSI >= {config.psi_threshold} on {', '.join(psi_hits)}")
                if labels:
                    perf, labelled, notes = _performance(champ, window, load_labels(labels, outputs), config)
                    result.performance = perf
                    result.reasons += notes
                    if perf and perf.decayed:
                        result.performance_decayed = True
                        result.reasons.append(f"{perf.metric} {perf.holdout:.4f} -> {perf.current:.4f} "
                                              f"(drop {perf.drop:.4f} > {config.metric_drop})")
                if result.drift_detected:
                    result.status = "drift"
                elif result.performance_decayed:
                    result.status = "performance_decay"
        result.report_uri = _log_report(client, run_id, result, drift_profile, window)
        client.log_batch(run_id, metrics=_metrics(result, now))
    except Exception as exc:
        message = _explain(exc, outputs)
        client.set_tag(run_id, "mlops.monitor.state", "failed")
        client.set_tag(run_id, "mlops.monitor.error", message[:5000])
        client.set_terminated(run_id, "FAILED")
        if isinstance(exc, MonitorError):
            raise
        raise MonitorError(message) from exc

    # 6. act (the report is safely logged: an alert or a retraining is never based on a half-done run)
    if result.status in ("drift", "performance_decay", "data_integrity_failure"):
        result.alert = send_alert(
            {"status": result.status, "endpoint": endpoint, "model": model_name, "version": champ.version,
             "reasons": result.reasons, "monitor_run_id": run_id},
            workdir=workdir, webhook=config.alert_webhook, sns_topic_arn=config.alert_sns_topic_arn,
        )
    if result.status in ("drift", "performance_decay"):
        result.retraining = _retrain(outputs, endpoint, champ, reference, labelled, config, retrain_spec, run_id)
    result.seconds = round(time.monotonic() - started, 2)
    try:
        client.log_text(run_id, result.model_dump_json(indent=2), "summary.json")
    except Exception as exc:  # the actions happened; say the summary could not be stored, don't undo them
        log.error("could not store summary.json for run %s: %s", run_id, exc)
    client.set_tag(run_id, "mlops.monitor.state", "complete")
    client.set_tag(run_id, "mlops.monitor.status", result.status)
    client.set_terminated(run_id, "FINISHED")
    return result


# --- the report -----------------------------------------------------------------------------


def _figure_png(name: str, profile: ReferenceProfile, current: pd.Series) -> bytes:
    """Reference vs current distribution of one feature (matplotlib Agg, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    if name in profile.numeric:
        ref = profile.numeric[name].sorted_values
        cur = current.to_numpy(dtype=float, na_value=np.nan)
        cur = cur[~np.isnan(cur)]
        both = np.concatenate([ref[[0, -1]], [cur.min(), cur.max()] if len(cur) else []])
        lo, hi = both.min(), both.max()
        # A list, not the array: matplotlib's stubs type `bins` as int | Sequence[float] | str.
        bins = np.linspace(lo, hi, 31).tolist() if hi > lo else 10
        ax.hist(ref, bins=bins, density=True, alpha=0.5, label=f"reference (n={len(ref)})")
        ax.hist(cur, bins=bins, density=True, alpha=0.5, label=f"current (n={len(cur)})")
    else:
        p = profile.categorical[name]
        counts = current.dropna().astype(str).value_counts()
        cats = list(p.categories) + [c for c in counts.index if c not in set(p.categories)]
        x = np.arange(len(cats))
        ref_share = [dict(zip(p.categories, p.counts / max(p.counts.sum(), 1), strict=True)).get(c, 0) for c in cats]
        cur_share = [counts.get(c, 0) / max(counts.sum(), 1) for c in cats]
        ax.bar(x - 0.2, ref_share, 0.4, label="reference")
        ax.bar(x + 0.2, cur_share, 0.4, label="current")
        ax.set_xticks(x, cats, rotation=30, ha="right", fontsize=8)
    ax.set_title(name)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _html(result: MonitorResult, figures: dict[str, bytes]) -> str:
    esc = html.escape
    rows = ""
    if result.drift:
        for f in result.drift.features + ([result.drift.prediction] if result.drift.prediction else []):
            cells = [f.name, f.kind, f.test, _fmt(f.statistic), _fmt(f.p_value), _fmt(f.psi),
                     f"{f.null_rate_reference:.3f} → {f.null_rate_current:.3f}", ", ".join(f.unseen_categories),
                     "yes" if f.drifted else "", "; ".join(f.reasons)]
            rows += "<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in cells) + "</tr>\n"
    perf = ""
    if result.performance:
        p = result.performance
        perf = (f"<h2>Performance</h2><p>{esc(p.metric)}: holdout {p.holdout:.4f}, window {p.current:.4f} "
                f"on {p.labelled_rows} labelled rows (drop {p.drop:.4f}{', decayed' if p.decayed else ''})</p>")
    images = "".join(
        f'<figure><img alt="{esc(n)}" src="data:image/png;base64,{base64.b64encode(b).decode()}"></figure>'
        for n, b in figures.items()
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>monitor {esc(result.endpoint)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px}}figure{{display:inline-block;margin:4px}}</style></head><body>
<h1>{esc(result.endpoint)}: {esc(result.status)}</h1>
<p>model {esc(result.model_name)} v{esc(result.model_version)} (@{esc(result.alias)}); window
{esc(json.dumps(result.window))}</p>
<ul>{"".join(f"<li>{esc(r)}</li>" for r in result.reasons) or "<li>nothing above the thresholds</li>"}</ul>
{perf}
<h2>Features</h2><table><tr><th>feature</th><th>kind</th><th>test</th><th>statistic</th><th>p-value</th>
<th>PSI</th><th>null rate</th><th>unseen</th><th>drifted</th><th>why</th></tr>
{rows}</table><h2>Most drifted</h2>{images}</body></html>"""


def summary_table(result: MonitorResult) -> Any:
    """The result for a terminal (rich)."""
    from rich.table import Table

    table = Table(title=f"{result.endpoint}: {result.status}  ({result.model_name} v{result.model_version})")
    for column in ("feature", "test", "statistic", "p-value", "PSI", "null rate", "drifted"):
        table.add_column(column)
    if result.drift:
        for f in result.drift.features + ([result.drift.prediction] if result.drift.prediction else []):
            table.add_row(f.name, f.test, _fmt(f.statistic), _fmt(f.p_value), _fmt(f.psi),
                          f"{f.null_rate_reference:.3f} → {f.null_rate_current:.3f}",
                          "[red]yes[/red]" if f.drifted else "")
    lines = [*result.reasons, f"window: {result.window['rows']} rows"]
    if result.performance:
        p = result.performance
        lines.append(f"{p.metric}: holdout {p.holdout:.4f}, window {p.current:.4f} ({p.labelled_rows} labelled)")
    if result.alert:
        lines.append(f"alert sent via {', '.join(result.alert.channels)}")
    if result.retraining:
        r = result.retraining
        lines.append(f"retraining: {r.reason}" + (f" -> v{r.version} {r.decision}" if r.version else "")
                     + (f" ({r.error})" if r.error else ""))
    lines.append(f"report: {result.report_uri} (run {result.run_id})")
    table.caption = "\n".join(lines)
    return table


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"


def _log_report(
    client: Any, run_id: str, result: MonitorResult, profile: ReferenceProfile | None, window: pd.DataFrame,
) -> str:
    """Log plots and the self-contained HTML report; returns the report's artifact URI."""
    figures: dict[str, bytes] = {}
    if result.drift and profile is not None:
        for f in result.drift.most_drifted(4):
            figures[f.name] = _figure_png(f.name, profile, window[f.name])
    with tempfile.TemporaryDirectory() as tmp:
        for name, png in figures.items():
            path = Path(tmp) / f"{''.join(c if c.isalnum() or c in '-_.' else '_' for c in name)}.png"
            path.write_bytes(png)
            client.log_artifact(run_id, str(path), "plots")
        path = Path(tmp) / "report.html"
        path.write_text(_html(result, figures))
        client.log_artifact(run_id, str(path))
    return f"{client.get_run(run_id).info.artifact_uri}/report.html"


def as_signature_types(X: pd.DataFrame, model: Any) -> pd.DataFrame:
    """Numeric columns cast to the model signature's types: MLflow's schema enforcement refuses
    int64 -> double and float64 -> long, and Parquet or CSV may hand back either."""
    schema = model.metadata.get_input_schema()
    if schema is None or not schema.has_input_names():
        return X
    casts = {}
    for name, dtype in zip(schema.input_names(), schema.input_types(), strict=False):
        target = getattr(dtype, "to_numpy", lambda: None)()
        if name in X.columns and target is not None and target.kind in "if" and X[name].dtype != target:
            if target.kind == "f" or not X[name].isna().any():
                casts[name] = target
    return X.astype(casts) if casts else X


def _prediction_profile(champ: _Champion, reference: pd.DataFrame) -> ReferenceProfile:
    """The champion's predictions on its own holdout rows (what it scored unseen): the prediction baseline."""
    import mlflow

    from workloads.data import dataset as datasets

    target = champ.tags["mlops.target"]
    rows = reference
    try:
        _, rows = datasets.split(
            reference, target, classification=champ.tags["mlops.task"] == "classification",
            seed=int(champ.tags.get("mlops.split.seed", 0)),
            holdout_fraction=float(champ.tags.get("mlops.split.holdout_fraction", 0.2)),
        )
    except (ValueError, KeyError) as exc:  # not reproducible: fall back to every reference row
        log.warning("holdout split not reproducible (%s): prediction baseline uses all reference rows", exc)
    model = mlflow.pyfunc.load_model(f"models:/{champ.name}/{champ.version}")
    X = as_signature_types(rows[champ.features], model)
    predictions = np.asarray(model.predict(X), dtype=float).reshape(len(rows), -1)[:, 0]
    return ReferenceProfile.build(pd.DataFrame({PREDICTION: predictions}),
                                  meta={"model": champ.name, "version": champ.version})


def _retrain(
    outputs: StackOutputs, endpoint: str, champ: _Champion, reference: pd.DataFrame, labelled: pd.DataFrame,
    config: MonitorConfig, retrain_spec: Path | None, monitor_run_id: str,
) -> RetrainOutcome:
    if not config.retrain:
        return RetrainOutcome(triggered=False, reason="retraining disabled (--no-retrain)")
    if labelled.empty:
        return RetrainOutcome(triggered=False, reason="no labelled rows in the window: nothing new to learn from")
    s3 = outputs.s3_client()
    lock = RetrainLock(s3, outputs.capture_bucket, endpoint, timedelta(hours=config.lock_stale_hours))
    if not lock.acquire():
        holder = lock.holder or {}
        return RetrainOutcome(triggered=False, reason=f"a retraining is already in flight "
                                                      f"({holder.get('owner')} since {holder.get('since')})")
    try:
        last = _last_retrain(s3, outputs.capture_bucket, endpoint)
        if last:
            age = datetime.now(UTC) - datetime.fromisoformat(last["time"])
            if age < timedelta(hours=config.cooldown_hours):
                return RetrainOutcome(triggered=False, reason=f"cooldown: last retraining at {last['time']} "
                                                              f"(< {config.cooldown_hours} h ago)")
        record = {"time": datetime.now(UTC).isoformat(), "monitor_run_id": monitor_run_id, "owner": lock.owner}
        _record_retrain(s3, outputs.capture_bucket, endpoint, record | {"state": "started"})
        try:
            newest = _newest_data(reference, labelled, champ)
            jobs_dir = retrain_jobs.jobs_dir()
            if jobs_dir is not None:  # in the cluster: start the retraining Job(s)
                uri = _store_newest(s3, outputs.capture_bucket, endpoint, monitor_run_id, newest)
                names = retrain_jobs.create_jobs(jobs_dir, uri)
                _record_retrain(s3, outputs.capture_bucket, endpoint, record | {"state": "job_created", "jobs": names})
                return RetrainOutcome(triggered=True, reason=f"created retraining Job(s) {', '.join(names)} "
                                                             f"on {len(newest)} rows at {uri}")
            from workloads.training.job import train

            spec, widened = _widened(_spec(champ, retrain_spec), newest, outputs)
            result = train(spec, outputs, data=newest, progress=False)
        except Exception as exc:  # the training job reports its own failure; the monitor records it
            _record_retrain(s3, outputs.capture_bucket, endpoint, record | {"state": "failed", "error": str(exc)})
            return RetrainOutcome(triggered=True, reason="retraining failed", error=f"{type(exc).__name__}: {exc}")
        _record_retrain(s3, outputs.capture_bucket, endpoint, record | {
            "state": "done", "version": result.version, "decision": result.decision, "run_id": result.run_id})
        return RetrainOutcome(triggered=True, reason=f"retrained on {len(reference)} reference + "
                                                     f"{len(labelled)} labelled captured rows"
                                                     + (f"; ranges widened: {widened}" if widened else ""),
                              version=result.version, decision=result.decision, run_id=result.run_id)
    finally:
        lock.release()


def _experiment_id(client: Any, name: str) -> str:
    """The experiment's id, creating it if needed; two monitors may race to create it."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    try:
        return str(client.create_experiment(name))
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return str(client.get_experiment_by_name(name).experiment_id)


def _store_newest(s3: Any, bucket: str, endpoint: str, run_id: str, newest: pd.DataFrame) -> str:
    """The retraining data where the Job can read it (the monitor may write only `monitoring/`)."""
    key = f"monitoring/{endpoint}/retrain/{run_id}.parquet"
    buffer = io.BytesIO()
    newest.to_parquet(buffer, index=False)
    s3.put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())
    return f"s3://{bucket}/{key}"


def _widened(spec: Any, newest: pd.DataFrame, outputs: StackOutputs) -> tuple[Any, str]:
    """The spec with its dataset schema's numeric ranges widened to cover the newest data.

    Drifted values are what retraining is for, so they must not fail the range check; kinds,
    categories and null rates are still enforced. The stored schema itself is left unchanged.
    """
    from workloads.data import dataset as datasets

    schema = spec.dataset.data_schema or datasets.load_schema(spec.dataset.name, outputs)
    if schema is None:
        return spec, ""
    columns, changes = dict(schema.columns), []
    for name, col in schema.columns.items():
        if name not in newest.columns or col.kind not in ("integer", "float") or newest[name].isna().all():
            continue
        lo, hi = float(newest[name].min()), float(newest[name].max())
        new_min = min(col.min, lo) if col.min is not None else None
        new_max = max(col.max, hi) if col.max is not None else None
        if (new_min, new_max) != (col.min, col.max):
            columns[name] = col.model_copy(update={"min": new_min, "max": new_max})
            changes.append(f"{name} [{new_min:g}, {new_max:g}]" if new_min is not None and new_max is not None
                           else name)
    dataset = spec.dataset.model_copy(update={"data_schema": schema.model_copy(update={"columns": columns})})
    return spec.model_copy(update={"dataset": dataset}), ", ".join(changes)


def _spec(champ: _Champion, retrain_spec: Path | None) -> Any:
    """The training spec: `--retrain-spec`, else the one the champion was trained with."""
    import mlflow
    import yaml

    from workloads.training.job import TrainingSpec

    if retrain_spec is not None:
        return TrainingSpec.from_yaml(retrain_spec)
    text = mlflow.artifacts.load_text(f"runs:/{champ.run_id}/spec.yaml")
    return TrainingSpec.parse(yaml.safe_load(text), f"runs:/{champ.run_id}/spec.yaml")


def _metrics(result: MonitorResult, now: datetime) -> list[Any]:
    from mlflow.entities import Metric

    ts = int(now.timestamp() * 1000)
    values: dict[str, float] = {"window.rows": result.window["rows"]}
    if result.drift:
        d = result.drift
        values |= {"drift.share": d.drift_share, "drift.n_drifted": d.n_drifted, "drift.max_psi": d.max_psi}
        for f in d.features + ([d.prediction] if d.prediction else []):
            for key, value in (("psi", f.psi), ("statistic", f.statistic), ("p_value", f.p_value),
                               ("null_rate", f.null_rate_current), ("drifted", float(f.drifted))):
                if value is not None and math.isfinite(value):
                    values[f"{key}.{f.name}"] = value
    if result.performance:
        p = result.performance
        values |= {f"metric.{p.metric}": p.current, f"holdout.{p.metric}": p.holdout, "metric.drop": p.drop,
                   "labelled.rows": p.labelled_rows}
    return [Metric(k, float(v), ts, 0) for k, v in values.items()][:1000]


def _explain(exc: Exception, outputs: StackOutputs) -> str:
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, BotoCoreError | ClientError):
        return f"object storage failed ({outputs.s3_endpoint or 'AWS S3'}): {exc}"
    return f"{type(exc).__name__}: {exc}"


def run_settings(settings: Any, outputs: StackOutputs, workdir: Path) -> MonitorResult:
    """What `mlops monitor` runs (MonitorSettings)."""
    outputs.apply_env()
    config = MonitorConfig(**settings.model_dump(include=set(MonitorConfig.model_fields)))
    return monitor(settings.endpoint, settings.model, outputs, alias=settings.alias, config=config,
                   labels=settings.labels, retrain_spec=Path(settings.retrain_spec) if settings.retrain_spec else None,
                   workdir=workdir)
