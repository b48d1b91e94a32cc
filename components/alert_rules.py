"""Alert rules of one environment, as Prometheus rule groups (a PrometheusRule, or a rules file).

Every expression is scoped to the environment's namespace, so environments sharing a cluster
(and its Prometheus) alert separately:
- an endpoint answers more than `observability.alertErrorRate` of its requests with 5xx, or its
  p99 latency is above `observability.alertP99Seconds`, for 10 minutes;
- capture drops rows or fails writes (the monitor would judge a partial window);
- a Job failed (training, retraining, a monitoring run), and which CronJob it came from;
- an endpoint's monitoring has not completed for two schedule periods (from the figures each
  run pushes, workloads/monitoring/export.py), or never reported at all; only where runs push.
"""

from __future__ import annotations

import itertools
from datetime import date, timedelta
from typing import Any

from components.config import EnvironmentConfig

MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
          "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
_NAMES = {**{m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())},
          **{d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}}
_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 6))


def _field(text: str, low: int, high: int) -> set[int]:
    values: set[int] = set()
    for item in text.split(","):
        span, _, step = item.partition("/")
        if span in ("*", "?"):
            first, last = low, high
        else:
            a, _, b = span.partition("-")
            first = _number(a, text)
            last = _number(b, text) if b else (high if step else first)
        values.update(range(first, last + 1, int(step) if step else 1))
    return values


def _number(text: str, field: str) -> int:
    value = int(text) if text.isdigit() else _NAMES.get(text.lower())
    if value is None:
        raise ValueError(f"cron field {field!r} is not numbers, ranges or names")
    return value


def cron_period_seconds(schedule: str) -> int:
    """The longest gap between two runs of a (Kubernetes) cron schedule, over a 400-day span."""
    fields = MACROS.get(schedule.strip(), schedule).split()
    minutes, hours, days, months, weekdays = (_field(f, lo, hi) for f, (lo, hi) in zip(fields, _RANGES, strict=True))
    restricted_day = fields[2] not in ("*", "?")
    restricted_weekday = fields[4] not in ("*", "?")
    times = sorted(h * 3600 + m * 60 for h, m in itertools.product(hours, minutes))
    fires: list[int] = []
    start = date(2027, 1, 1)
    for offset in range(400):
        day = start + timedelta(days=offset)
        by_day, by_weekday = day.day in days, day.isoweekday() % 7 in weekdays
        # cron's rule: with both day fields restricted, either one matching is enough.
        matched = (by_day or by_weekday) if restricted_day and restricted_weekday else (by_day and by_weekday)
        if day.month in months and matched:
            fires.extend(offset * 86400 + t for t in times)
    if len(fires) < 2:
        raise ValueError(f"schedule {schedule!r} runs less than twice in 400 days")
    return max(b - a for a, b in itertools.pairwise(fires))


def _duration(seconds: int) -> str:
    return f"{seconds // 60}m" if seconds % 3600 else f"{seconds // 3600}h"


def serving_rules(env: EnvironmentConfig) -> list[dict[str, Any]]:
    ns = env.namespace
    cfg = env.observability
    by = "sum by (namespace, mlops_endpoint)"
    requests = f'mlops_serving_requests_total{{namespace="{ns}"}}'
    errors = f'mlops_serving_requests_total{{namespace="{ns}", status=~"5.."}}'
    return [
        _rule("MlopsEndpointErrorRate", f"({by} (rate({errors}[5m])) / {by} (rate({requests}[5m]))) > {cfg.alert_error_rate:g}",
              "10m", "critical", "Endpoint {{ $labels.mlops_endpoint }} answers {{ $value | humanizePercentage }} with 5xx"),
        _rule("MlopsEndpointLatencyP99",
              f'histogram_quantile(0.99, sum by (namespace, mlops_endpoint, le) (rate(mlops_serving_request_seconds_bucket{{namespace="{ns}"}}[5m]))) > {cfg.alert_p99_seconds:g}',
              "10m", "warning", "Endpoint {{ $labels.mlops_endpoint }} p99 latency is {{ $value | humanizeDuration }}"),
        _rule("MlopsCaptureDropping",
              f'{by} (increase(mlops_capture_records_dropped_total{{namespace="{ns}"}}[10m])) > 0',
              "0m", "warning", "Endpoint {{ $labels.mlops_endpoint }} dropped {{ $value }} captured rows in 10 minutes: "
              "monitoring will judge a partial window"),
        _rule("MlopsCaptureWriteErrors",
              f'{by} (increase(mlops_capture_flush_errors_total{{namespace="{ns}"}}[15m])) > 0',
              "15m", "warning", "Endpoint {{ $labels.mlops_endpoint }} keeps failing to write capture to the bucket"),
    ]


def job_rules(env: EnvironmentConfig) -> list[dict[str, Any]]:
    ns = env.namespace
    failed = f'kube_job_failed{{namespace="{ns}", condition="true"}}'
    return [
        _rule("MlopsJobFailed", f"{failed} > 0", "0m", "warning",
              "Job {{ $labels.job_name }} failed (its pods' logs stay until ttlSecondsAfterFinished)"),
        _rule("MlopsCronJobFailed",
              f"max by (namespace, owner_name) ({failed} * on (namespace, job_name) group_left (owner_name) "
              f'kube_job_owner{{namespace="{ns}", owner_kind="CronJob"}}) > 0',
              "0m", "warning", "CronJob {{ $labels.owner_name }} has a failed Job"),
    ]


def monitoring_rules(env: EnvironmentConfig) -> list[dict[str, Any]]:
    """Per endpoint: the last completed monitoring run is older than two schedule periods."""
    period = cron_period_seconds(env.workloads.monitoring.schedule)
    rules = []
    for endpoint in env.serving.endpoints:
        series = f'mlops_monitoring_last_run_timestamp_seconds{{namespace="{env.namespace}", mlops_endpoint="{endpoint.name}"}}'
        rules.append(_rule("MlopsMonitoringNotRun", f"(time() - max({series})) > {2 * period}", "5m", "warning",
                           f"Monitoring of endpoint {endpoint.name} has not completed for two periods "
                           f"({_duration(2 * period)}); its last run was {{{{ $value | humanizeDuration }}}} ago",
                           endpoint=endpoint.name))
        rules.append(_rule("MlopsMonitoringNeverReported", f"absent({series})", _duration(2 * period), "warning",
                           f"Monitoring of endpoint {endpoint.name} has pushed no figures for two periods "
                           f"({_duration(2 * period)})", endpoint=endpoint.name))
    return rules


def rule_groups(env: EnvironmentConfig, *, runs_push: bool) -> list[dict[str, Any]]:
    """`runs_push`: monitoring runs push to a Pushgateway; without one their figures never reach
    Prometheus and the monitoring rules would fire forever (a failed run still alerts as a failed Job)."""
    groups = [("serving", serving_rules(env)), ("jobs", job_rules(env)),
              ("monitoring", monitoring_rules(env) if runs_push else [])]
    return [{"name": f"mlops-{env.name}-{name}", "rules": rules} for name, rules in groups if rules]


def _rule(alert: str, expr: str, for_: str, severity: str, summary: str, endpoint: str | None = None) -> dict[str, Any]:
    labels = {"severity": severity, "mlops_platform": "true"}
    if endpoint:
        labels["mlops_endpoint"] = endpoint
    return {"alert": alert, "expr": expr, "for": for_, "labels": labels, "annotations": {"summary": summary}}
