"""Alerts from monitoring: a webhook POST, an SNS message, or (locally) a log line and a file.

Delivery never hides the alert: when the webhook or SNS fails, the error is recorded and the
alert still goes to the log and to `<workdir>/alerts.jsonl`.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

log = logging.getLogger(__name__)
ALERTS_FILE = "alerts.jsonl"


class AlertOutcome(BaseModel):
    channels: list[str]  # where it was delivered: webhook, sns, file
    errors: list[str] = []


def send_alert(
    alert: dict[str, Any], *, workdir: Path, webhook: str | None = None, sns_topic_arn: str | None = None,
    timeout: float = 10.0,
) -> AlertOutcome:
    """Deliver `alert` (a JSON-able dict with at least `status` and `endpoint`)."""
    alert = {"time": datetime.now(UTC).isoformat(), **alert}
    body = json.dumps(alert, default=str)
    channels: list[str] = []
    errors: list[str] = []
    if webhook:
        import httpx

        try:
            httpx.post(webhook, content=body, headers={"Content-Type": "application/json"},
                       timeout=timeout).raise_for_status()
            channels.append("webhook")
        except httpx.HTTPError as exc:
            errors.append(f"webhook {webhook}: {exc}")
    if sns_topic_arn:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            subject = f"mlops monitor: {alert.get('endpoint')} {alert.get('status')}"[:100]
            boto3.client("sns").publish(TopicArn=sns_topic_arn, Subject=subject, Message=body)
            channels.append("sns")
        except (BotoCoreError, ClientError) as exc:
            errors.append(f"sns {sns_topic_arn}: {exc}")
    if not channels:  # local mode, or every remote channel failed
        log.warning("ALERT %s", body)
        path = Path(workdir) / ALERTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            handle.write(body + "\n")
        channels.append("file")
    return AlertOutcome(channels=channels, errors=errors)
