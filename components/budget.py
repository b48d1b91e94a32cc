"""The environment's monthly AWS Budgets cost budget and where its alerts go.

One `aws.budgets.Budget` per environment, limited to `budget.monthlyUsd` (default by kind) and
filtered on the `environment` tag every resource carries (activate `environment` as a cost
allocation tag in the billing console once per account, or the filter matches nothing). Two
notifications: actual spend above 80% and forecast spend above 100% of the limit.

Alerts go to `budget.alertSnsTopicArn` (default: `workloads.monitoring.alertSnsTopicArn`) and
`budget.alertEmails`. With neither, the component creates the topic `mlops-<env>-budget-alerts`
that AWS Budgets may publish to; subscribe the team to it. Budgets without actions are free.

The component's own inputs record the budget and the S3 size the cost estimate assumes, so
`components/cost.py` reads them from the rendered stack like any other resource.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from components.config import EnvironmentConfig

TYPE = "mlops:budget:Budget"
ACTUAL_ALERT_PERCENT = 80.0  # early warning on money already spent
FORECAST_ALERT_PERCENT = 100.0  # the month is on course to exceed the budget


@dataclass(frozen=True)
class BudgetArgs:
    env: EnvironmentConfig


class Budget(pulumi.ComponentResource):
    alert_topic_arn: pulumi.Output[str]

    def __init__(self, name: str, args: BudgetArgs, opts: pulumi.ResourceOptions | None = None):
        env = args.env
        super().__init__(TYPE, name, {
            "monthlyUsd": env.budget_monthly_usd, "assumedS3Gb": env.budget.assumed_s3_gb,
        }, opts)
        topic_arn: pulumi.Input[str] | None = env.budget_alert_sns_topic_arn
        if topic_arn is None and not env.budget.alert_emails:
            topic_arn = self._alert_topic(name, env)
        topics = [topic_arn] if topic_arn is not None else []
        notifications = [
            aws.budgets.BudgetNotificationArgs(
                notification_type=kind, comparison_operator="GREATER_THAN", threshold=percent,
                threshold_type="PERCENTAGE", subscriber_email_addresses=list(env.budget.alert_emails),
                subscriber_sns_topic_arns=topics)
            for kind, percent in (("ACTUAL", ACTUAL_ALERT_PERCENT), ("FORECASTED", FORECAST_ALERT_PERCENT))
        ]
        self.budget = aws.budgets.Budget(
            f"{name}-monthly",
            name=f"mlops-{env.name}",
            budget_type="COST",
            time_unit="MONTHLY",
            limit_amount=f"{env.budget_monthly_usd:.2f}",
            limit_unit="USD",
            # Only this environment's spend: the provider's default tags put `environment` on everything.
            cost_filters=[aws.budgets.BudgetCostFilterArgs(name="TagKeyValue",
                                                           values=[f"user:environment${env.name}"])],
            notifications=notifications,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.alert_topic_arn = pulumi.Output.from_input(topics[0] if topics else "")
        self.register_outputs({"alert_topic_arn": self.alert_topic_arn})

    def _alert_topic(self, name: str, env: EnvironmentConfig) -> pulumi.Output[str]:
        """A topic Budgets may publish to. Not KMS-encrypted: the AWS-managed SNS key does not let
        Budgets publish, and an alert carries only the budget name and amounts."""
        topic = aws.sns.Topic(f"{name}-alerts", name=f"mlops-{env.name}-budget-alerts",
                              opts=pulumi.ResourceOptions(parent=self))
        account = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self)).account_id
        policy = pulumi.Output.all(topic.arn, account).apply(lambda a: json.dumps({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "BudgetsPublish",
                "Effect": "Allow",
                "Principal": {"Service": "budgets.amazonaws.com"},
                "Action": "SNS:Publish",
                "Resource": a[0],
                "Condition": {"StringEquals": {"aws:SourceAccount": a[1]}},
            }],
        }))
        aws.sns.TopicPolicy(f"{name}-alerts", arn=topic.arn, policy=policy,
                            opts=pulumi.ResourceOptions(parent=self))
        return topic.arn
