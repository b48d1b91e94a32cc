"""The settings contract: what each workload takes, defined once.

One pydantic model per workload command. Defaults and bounds live only here:
- `components/` renders a container's arguments with `to_args(settings)`, and takes the
  defaults and bounds of the stack-config keys that feed them with `contract_field(...)`;
- the CLI (`workloads/cli/`) builds each command's options from the same model and validates
  what it parsed with it, so a rendered container and a typed command line cannot disagree;
- `tests/contract/` parses every rendered container through the real CLI.

Settings are plain values: where a workload runs (the stack outputs) is not a setting, it is
the `Environment` (workloads/environment.py). Field order is option order in `--help`.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.config import JsonDict
from pydantic.fields import FieldInfo

ARGUMENT: JsonDict = {"argument": True}  # json_schema_extra: a positional argument, not an --option
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # registered model names, aliases, endpoint names
SNS_TOPIC_ARN = r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:[0-9]{12}:[A-Za-z0-9_-]{1,256}$"
# The address a serving pod listens on: every interface, so the Service and the probes reach it.
POD_HOST = "0.0.0.0"
# How an endpoint runs a `challenger` beside its champion (workloads/serving/rollout.py, monitoring/rollout.py).
RolloutMode = Literal["none", "shadow", "canary"]
CHALLENGER_ALIAS = "challenger"


class Settings(BaseModel):
    """Base: frozen, unknown fields rejected (a typo in a rendered argument fails loudly)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _http_url(value: str | None) -> str | None:
    if value is not None and not re.match(r"^https?://[^\s/]+(/\S*)?$", value):
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value


# --- serving -----------------------------------------------------------------------------------


class ServeSettings(Settings):
    """`mlops serve`: one endpoint serving models:/MODEL@ALIAS."""

    model: str = Field(pattern=NAME, description="Registered model name.")
    alias: str = Field("champion", pattern=NAME, description="Registry alias to serve (resolved to a version).")
    host: str = Field("127.0.0.1", min_length=1, description=f"Address to listen on ({POD_HOST} in a pod).")
    port: int = Field(8080, ge=1, le=65535, description="Port to listen on.")
    workers: int = Field(1, ge=1, le=32, description="Worker processes (each batches and captures).")
    max_batch_rows: int = Field(256, ge=1, le=100_000, description="Rows per predict call; 1 = off.")
    max_wait_ms: float = Field(2.0, ge=0, le=1000, description="How long a batch waits for more requests.")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1, le=1024**3, description="Larger bodies get 413.")
    # Hostile-input bounds (workloads/serving/limits.py, admission.py, connection.py): checked
    # before a DataFrame is built, per worker process.
    max_request_rows: int = Field(10_000, ge=1, le=10_000_000, description="Rows per request; more get 413.")
    max_decoded_bytes: int = Field(32 * 1024 * 1024, ge=1024, le=1024**3,
                                   description="A request's values once decoded (Parquet, JSON, CSV); more get 413.")
    max_concurrent_requests: int = Field(64, ge=1, le=10_000,
                                         description="Scoring requests in flight per worker; more get 503.")
    max_inflight_bytes: int = Field(128 * 1024 * 1024, ge=1024**2, le=16 * 1024**3,
                                    description="Bodies and decoded values in flight per worker; more get 503.")
    max_connections: int = Field(2048, ge=1, le=100_000, description="Open connections per worker; more get 503.")
    max_header_bytes: int = Field(16 * 1024, ge=1024, le=1024**2,
                                  description="Request line and headers; larger get 431.")
    max_headers: int = Field(100, ge=8, le=10_000, description="Header fields per request; more get 431.")
    header_timeout_seconds: float = Field(10.0, gt=0, le=600,
                                          description="A request's headers must arrive within this; else 408.")
    body_timeout_seconds: float = Field(30.0, gt=0, le=3600,
                                        description="A request's body must arrive within this; else 408.")
    keep_alive_seconds: float = Field(5.0, gt=0, le=600, description="Idle keep-alive connections close after this.")
    pickle_allowed: bool = Field(False, description="Load pickle-based models (loading runs code from the model "
                                 "file); else only skops sklearn models with the project's trusted types.")
    capture: bool = Field(True, description="Write inputs and outputs to S3.")
    endpoint_name: str | None = Field(None, pattern=NAME, description="Capture prefix [default: the model name].")
    capture_flush_seconds: float = Field(10.0, gt=0, le=3600, description="Flush captured records this often.")
    capture_batch_rows: int = Field(50_000, ge=1, description="Flush at this many captured rows.")
    capture_max_buffer_rows: int = Field(100_000, ge=1,
                                         description="Rows kept in memory; beyond, records are dropped.")
    capture_max_string_chars: int = Field(1024, ge=1, le=1_048_576,
                                          description="Captured strings are cut to this many characters.")
    poll_seconds: float = Field(30.0, ge=0, description="Check the alias this often; 0 disables.")
    bootstrap_poll_seconds: float = Field(5.0, gt=0, le=3600,
                                          description="Registry polling while the alias does not resolve.")
    rollout: RolloutMode = Field("none", description="none, shadow (the challenger alias also scores every batch, "
                                 "off the response path) or canary (it answers --canary-weight of requests).")
    canary_weight: float = Field(0.1, ge=0, le=1, description="Canary: share of requests the challenger answers.")

    @property
    def endpoint(self) -> str:
        return self.endpoint_name or self.model


# --- monitoring --------------------------------------------------------------------------------


class MonitorSettings(Settings):
    """`mlops monitor`: drift and decay of one endpoint's captured traffic; alert and retrain."""

    endpoint: str = Field(pattern=NAME, description="Endpoint name (its capture prefix).")
    model: str = Field(pattern=NAME, description="Registered model name.")
    alias: str = Field("champion", pattern=NAME, description="Registry alias the endpoint serves.")
    window_hours: float = Field(24.0, gt=0, le=24 * 90, description="Window: the last H hours.")
    window_records: int | None = Field(None, ge=1, description="Window: the last N records (instead of hours).")
    labels: str | None = Field(None, min_length=1, description="Ground truth: CSV/Parquet path, s3:// URI or "
                               "prefix with request_id, [row,] label.")
    retrain_spec: str | None = Field(None, min_length=1,
                                     description="Spec for retraining [default: the champion run's spec.yaml].")
    retrain: bool = Field(True, description="Retrain on drift or decay.")
    min_rows: int = Field(200, ge=1, le=100_000_000, description="Fewer captured rows: insufficient_data.")
    exact_max_rows: int = Field(1_000_000, ge=1, le=20_000_000,
                                description="Windows up to this many rows are read exactly; larger ones "
                                            "from the capture summaries (KS from a sample, stated bound).")
    min_labelled_rows: int = Field(50, ge=1, description="Fewer labelled rows: no metric.")
    drift_share: float = Field(0.3, gt=0, le=1, description="Drift when this share of features drifts.")
    psi_threshold: float = Field(0.2, gt=0, le=100, description="Drift when any feature's PSI reaches it.")
    metric_drop: float = Field(0.05, ge=0, le=1, description="Decay when the metric drops more than this.")
    cooldown_hours: float = Field(6.0, ge=0, le=24 * 90, description="Hours between retrainings.")
    lock_stale_hours: float = Field(2.0, gt=0, le=24 * 7,
                                    description="A retraining lock older than this is taken over.")
    alert_webhook: str | None = Field(None, description="POST alerts (JSON) to this http(s) URL.")
    alert_sns_topic_arn: str | None = Field(None, pattern=SNS_TOPIC_ARN, description="Publish alerts to SNS.")
    rollout: RolloutMode = Field("none", description="The endpoint's rollout: compare champion and challenger, "
                                 "then promote or roll back the challenger.")
    rollout_min_labelled_rows: int = Field(30, ge=1, description="Rollout: fewer labelled rows per version: wait.")
    rollout_margin: float = Field(0.005, ge=0, le=1, description="Rollout: the challenger is promoted when its metric "
                                  "beats the champion's by more than this; rolled back when the champion's beats it.")

    @field_validator("alert_webhook")
    @classmethod
    def _webhook_is_url(cls, value: str | None) -> str | None:
        return _http_url(value)


# --- training ----------------------------------------------------------------------------------


class TrainSettings(Settings):
    """`mlops train SPEC`: one training run, a search shard, or the selection step."""

    spec: str = Field(min_length=1, json_schema_extra=ARGUMENT,
                      description="Training spec (YAML), e.g. workloads/specs/churn.yaml.")
    data: str | None = Field(None, min_length=1,
                             description="Train on this CSV/Parquet (path or s3:// URI) instead.")
    shard: int | None = Field(None, ge=0, description="Only cross-validate this shard's candidates (i, i+N, ...) "
                              "and log them; no registration. Needs --shards.")
    shards: int = Field(1, ge=1, le=100, description="Number of search shards (with --shard or --select).")
    select: bool = Field(False, description="Wait for all --shards shards, then fit, gate and register the best.")
    group: str | None = Field(None, pattern=NAME, json_schema_extra={"envvar": "MLOPS_SEARCH_GROUP"},
                              description="Search group shared by shards and select "
                                          "[default: spec hash + data digest].")
    wait_timeout: float = Field(3600.0, ge=0, le=7 * 24 * 3600,
                                description="--select: seconds to wait for the shards' finished runs.")
    retraining: bool = Field(False, description="The data is a monitor's retraining data (with --data): numeric "
                             "ranges may widen to it; kinds, categories and null rates are still enforced.")

    @model_validator(mode="after")
    def _one_step(self) -> TrainSettings:
        if self.shard is not None and self.select:
            raise ValueError("--shard and --select: choose one (shards search, select registers)")
        if self.shard is not None and self.shard >= self.shards:
            raise ValueError(f"--shard {self.shard}: must be below --shards {self.shards}")
        if self.retraining and self.data is None:
            raise ValueError("--retraining needs --data (the data the monitor handed over)")
        return self


# --- data --------------------------------------------------------------------------------------


class GenerateSettings(Settings):
    """`mlops data generate OUT`: the sample churn dataset, optionally shifted."""

    out: str = Field(min_length=1, json_schema_extra=ARGUMENT,
                     description="Output file (.csv or .parquet), or an s3:// URI with stack placeholders.")
    rows: int = Field(5000, ge=1, le=100_000_000, description="Number of rows.")
    seed: int = Field(0, description="Random seed (same seed, same rows).")
    shift: float = Field(0.0, ge=-100, le=100, description="Covariate shift, in standard deviations.")
    shift_features: str | None = Field(None, description="Comma-separated features to shift "
                                       "[monthly_charges,support_calls,contract].")
    concept_drift: float = Field(0.0, ge=0, le=1, description="0-1: change the label rule.")
    labels: bool = Field(True, description="Include the label column.")
    target: Literal["churned", "monthly_spend"] = Field(
        "churned", description="churned (classification) or monthly_spend (regression).")

    @field_validator("out")
    @classmethod
    def _table_file(cls, value: str) -> str:
        if not value.lower().endswith((".csv", ".parquet")):
            raise ValueError("the output must end in .csv or .parquet")
        return value


# --- lifecycle: promotion and reports -----------------------------------------------------------


class PromoteSettings(Settings):
    """`mlops promote MODEL`: one version copied to another environment and gated there (workloads/lifecycle/)."""

    model: str = Field(pattern=NAME, json_schema_extra=ARGUMENT, description="Registered model name.")
    version: int | None = Field(None, ge=1, description="Source version to promote [default: the --alias].")
    alias: str | None = Field(None, pattern=NAME, description="Source alias to promote [default: champion].")
    copy_dataset: bool = Field(True, description="Copy the training dataset version into the target's data bucket "
                               "(monitoring and retraining there read it); else only reference it.")

    @model_validator(mode="after")
    def _one_version(self) -> PromoteSettings:
        if self.version is not None and self.alias is not None:
            raise ValueError("--version and --alias: choose one")
        return self


class ReportSettings(Settings):
    """`mlops model report NAME VERSION`: everything recorded about one version (workloads/lifecycle/)."""

    name: str = Field(pattern=NAME, json_schema_extra=ARGUMENT, description="Registered model name.")
    version: int = Field(ge=1, json_schema_extra=ARGUMENT, description="Model version.")
    monitoring_runs: int = Field(100, ge=0, le=10_000,
                                 description="Newest monitoring runs of the version to include.")


# --- rendering and reuse -----------------------------------------------------------------------


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def to_args(settings: Settings, substitute: dict[str, str] | None = None) -> list[str]:
    """Command-line arguments for the fields that were set, in field order.

    `substitute` replaces a field's rendered value, e.g. `{"shard": "$(JOB_COMPLETION_INDEX)"}`
    (Kubernetes expands `$(VAR)` in args from the container's environment).
    """
    substitute = substitute or {}
    arguments: list[str] = []
    options: list[str] = []
    for name, info in type(settings).model_fields.items():
        if name not in settings.model_fields_set:
            continue
        value = getattr(settings, name)
        rendered = substitute.get(name, value)
        if _is_argument(info):
            arguments.append(str(rendered))
        elif isinstance(value, bool):
            options.append(option_name(name) if value else "--no-" + name.replace("_", "-"))
        elif value is not None:
            options += [option_name(name), _render(rendered)]
    return arguments + options


def _render(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _is_argument(info: FieldInfo) -> bool:
    extra = info.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("argument"))


def contract_field(model: type[Settings], name: str, **overrides: Any) -> Any:
    """A copy of a settings field (default, bounds, description) for a stack-config model.

    `components/config.py` declares e.g. `workers: int = contract_field(ServeSettings, "workers")`,
    so the stack key and the CLI option share one default and one set of bounds.
    """
    info = copy.deepcopy(model.model_fields[name])
    info.json_schema_extra = None
    for key, value in overrides.items():
        setattr(info, key, value)
    return info
