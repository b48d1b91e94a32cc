"""Cost on every plan: the estimate over each rendered stack, the price table, the PR delta, the budgets.

Expected figures are computed here from the price table's own numbers and the stack's config,
never copied from the estimator's output.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import subprocess
from datetime import date
from typing import Any

import pytest
import yaml

from components.config import BUDGET_USD_BY_KIND, ConfigError, parse_environment
from components.cost import CostReport, diff, estimate
from components.prices import PRICE_TABLE, PriceError, PriceTable
from components.render import ROOT, RenderResult, load_stack_config, render_stack, stack_file

from .conftest import ADMIN_PASSWORD, ALL_STACKS, AWS_STACKS

TABLE = PriceTable.load()
US_EAST = TABLE.region("us-east-1")
HOURS = TABLE.hours_per_month


def line(report: CostReport, resource: str) -> Any:
    (found,) = [ln for ln in report.lines if ln.resource == resource]
    return found


def render_with(stack: str, **changes: Any) -> RenderResult:
    """Render `stack`'s file with top-level `mlops-platform:<section>` values replaced."""
    config = copy.deepcopy(load_stack_config(stack_file(stack)))
    for key, value in changes.items():
        config[f"mlops-platform:{key}"] = value
    return render_stack(f"{stack}-custom", config=config, secrets={"trackingAdminPassword": ADMIN_PASSWORD})


def table_without(path: tuple[str, ...]) -> PriceTable:
    """The shipped table with one entry removed (regions -> ... -> key)."""
    regions = copy.deepcopy(TABLE.regions)
    node = regions
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    return dataclasses.replace(TABLE, regions=regions)


# --- the estimate over every stack ---------------------------------------------------------------

@pytest.mark.parametrize("stack", ALL_STACKS)
def test_every_stack_estimates_and_totals_are_the_sum_of_lines(rendered: dict[str, RenderResult], stack: str) -> None:
    report = estimate(rendered[stack])
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["total"]["monthly_min"] == round(sum(ln["monthly_min"] for ln in doc["lines"]), 2)
    assert doc["total"]["monthly_max"] == round(sum(ln["monthly_max"] for ln in doc["lines"]), 2)
    assert all(ln["monthly_min"] <= ln["monthly_max"] for ln in doc["lines"])
    if stack == "local":
        assert doc["lines"] == [] and doc["region"] is None
        assert any("cloud: none" in a for a in doc["assumptions"])
    else:
        assert doc["region"] == "us-east-1" and doc["total"]["monthly_min"] > 0


def test_prod_lines_follow_the_stack_file_and_the_table(rendered: dict[str, RenderResult]) -> None:
    report = estimate(rendered["prod"])
    ec2 = US_EAST["ec2"]
    system = line(report, "cluster-system")  # systemPool m6i.xlarge, 3..6, on-demand
    assert (system.monthly_min, system.monthly_max) == (round(3 * ec2["m6i.xlarge"]["on_demand"] * HOURS, 2),
                                                        round(6 * ec2["m6i.xlarge"]["on_demand"] * HOURS, 2))
    cpu = line(report, "cluster-cpu")  # spot c6i.4xlarge/c6a.4xlarge, 0..20: dearest type at max size
    dearest = max(ec2["c6i.4xlarge"]["spot"], ec2["c6a.4xlarge"]["spot"])
    assert (cpu.monthly_min, cpu.monthly_max) == (0.0, round(20 * dearest * HOURS, 2))
    assert "spot" in cpu.basis
    assert line(report, "cluster-gpu volumes").monthly_max == round(4 * 100 * US_EAST["ebs_gp3_gb_month"], 2)
    rds = line(report, "database-postgres")  # db.r6g.large, Multi-AZ in prod
    assert rds.monthly_min == round(US_EAST["rds_postgres"]["db.r6g.large"]["multi_az"] * HOURS, 2)
    storage = line(report, "database-postgres storage")  # 100 GB allocated, autoscaling to 4x
    per_gb = US_EAST["rds_gp3_gb_month"]["multi_az"]
    assert (storage.monthly_min, storage.monthly_max) == (round(100 * per_gb, 2), round(400 * per_gb, 2))
    nats = [ln for ln in report.lines if ln.type == "aws:ec2/natGateway:NatGateway"]
    assert len(nats) == 3  # one NAT per AZ in prod


def test_dev_has_one_nat_and_ci_pays_no_cluster(rendered: dict[str, RenderResult]) -> None:
    dev, ci = estimate(rendered["dev"]), estimate(rendered["ci"])
    assert len([ln for ln in dev.lines if ln.type == "aws:ec2/natGateway:NatGateway"]) == 1
    assert not [ln for ln in ci.lines if ln.type.startswith("aws:eks/")]
    assert any("another stack" in a for a in ci.assumptions)
    claim = line(ci, "database-postgres data")  # in-cluster Postgres: 10Gi claim on EBS
    assert claim.monthly_min == round(10 * US_EAST["ebs_gp3_gb_month"], 2)


def test_node_pool_min_and_max_follow_config_and_s3_the_assumed_size(rendered: dict[str, RenderResult]) -> None:
    config = load_stack_config(stack_file("dev"))
    cluster = copy.deepcopy(config["mlops-platform:cluster"])
    cluster["systemPool"] = {"instanceTypes": ["m6i.2xlarge"], "minSize": 1, "maxSize": 7}
    cluster["trainingPools"][0].update(minSize=2, maxSize=3)
    report = estimate(render_with("dev", cluster=cluster, budget={"assumedS3Gb": 2000}))
    rate = US_EAST["ec2"]["m6i.2xlarge"]["on_demand"]
    system = line(report, "cluster-system")
    assert (system.monthly_min, system.monthly_max) == (round(rate * HOURS, 2), round(7 * rate * HOURS, 2))
    spot = [US_EAST["ec2"][t]["spot"] for t in ("c6i.2xlarge", "c6a.2xlarge")]
    cpu = line(report, "cluster-cpu")
    assert (cpu.monthly_min, cpu.monthly_max) == (round(2 * min(spot) * HOURS, 2), round(3 * max(spot) * HOURS, 2))
    s3 = [ln for ln in report.lines if ln.type == "aws:s3/bucket:Bucket"]
    assert [ln.monthly_min for ln in s3] == [round(2000 * US_EAST["s3_standard_gb_month"], 2)]
    assert all(name in s3[0].basis for name in ("storage-data", "storage-artifacts", "storage-capture"))
    assert estimate(rendered["dev"]).total_max < report.total_max


# --- what the table cannot price is an error, never $0 ------------------------------------------

def test_an_unknown_instance_type_in_config_is_a_clear_error() -> None:
    config = load_stack_config(stack_file("dev"))
    cluster = copy.deepcopy(config["mlops-platform:cluster"])
    cluster["trainingPools"][0]["instanceTypes"] = ["c9z.large"]
    result = render_with("dev", cluster=cluster)
    with pytest.raises(PriceError) as error:
        estimate(result)
    message = str(error.value)
    assert "cluster-cpu" in message and "'c9z.large'" in message and PRICE_TABLE.name in message


@pytest.mark.parametrize("missing, expected", [
    (("us-east-1", "ec2", "c6a.2xlarge", "spot"), "no spot price for instance type 'c6a.2xlarge'"),
    (("us-east-1", "ec2", "m6i.large"), "no on-demand price for instance type 'm6i.large'"),
    (("us-east-1", "rds_postgres", "db.t4g.medium"), "instance class 'db.t4g.medium'"),
    (("us-east-1", "nat_gateway_hourly"), "'nat_gateway_hourly'"),
    (("us-east-1",), "no prices for region 'us-east-1'"),
])
def test_a_price_missing_from_the_table_is_an_error(rendered: dict[str, RenderResult], missing: tuple[str, ...],
                                                    expected: str) -> None:
    with pytest.raises(PriceError, match=expected.replace(".", r"\.")):
        estimate(rendered["dev"], table_without(missing))


def test_eks_control_plane_is_priced_by_support_status(rendered: dict[str, RenderResult]) -> None:
    end = TABLE.eks["end_of_standard_support"]["1.35"]
    before = estimate(rendered["dev"], dataclasses.replace(TABLE, as_of=date(end.year - 1, 1, 1)))
    after = estimate(rendered["dev"], dataclasses.replace(TABLE, as_of=date(end.year + 1, 1, 1)))
    assert line(before, "cluster-eks").monthly_min == round(TABLE.eks["standard_hourly"] * HOURS, 2)
    assert line(after, "cluster-eks").monthly_min == round(TABLE.eks["extended_hourly"] * HOURS, 2)
    assert "extended support" in line(after, "cluster-eks").basis
    calendar = dict(TABLE.eks, end_of_standard_support={})
    with pytest.raises(PriceError, match="'1.35' is not in the EKS support calendar"):
        estimate(rendered["dev"], dataclasses.replace(TABLE, eks=calendar))


def test_the_price_table_states_its_date_and_sources() -> None:
    doc = yaml.safe_load(PRICE_TABLE.read_text())
    assert PRICE_TABLE.name == f"aws-{doc['as_of'].isoformat()}.yaml"
    assert {"ec2_on_demand", "ec2_spot", "other"} <= set(doc["sources"])
    assert "ASSUMPTION" in doc["sources"]["ec2_spot"]  # spot figures are labelled as what they are
    regions = {str(load_stack_config(stack_file(s)).get("aws:region")) for s in AWS_STACKS}
    assert regions <= set(doc["regions"])


# --- machine-readable output and the PR delta ----------------------------------------------------

def test_json_output_is_machine_readable(rendered: dict[str, RenderResult]) -> None:
    doc = json.loads(json.dumps(estimate(rendered["staging"]).to_json()))
    assert set(doc) >= {"stack", "region", "currency", "price_table", "lines", "total", "budget", "assumptions",
                        "not_priced"}
    assert doc["price_table"]["as_of"] == TABLE.as_of.isoformat()
    assert all(set(ln) == {"resource", "type", "basis", "monthly_min", "monthly_max"} for ln in doc["lines"])
    assert all(isinstance(ln["monthly_max"], float) for ln in doc["lines"])
    assert doc["budget"] == {"monthly_usd": BUDGET_USD_BY_KIND["staging"]}


def test_the_table_renders_lines_total_and_sources(rendered: dict[str, RenderResult]) -> None:
    from rich.console import Console

    console = Console(width=200, record=True)
    report = estimate(rendered["prod"])
    console.print(report.table())
    text = console.export_text()
    assert "cluster-system" in text and f"${report.total_max:,.2f}" in text
    assert TABLE.as_of.isoformat() in text and "not priced" in text


def test_diff_shows_the_delta_against_the_base_branch(rendered: dict[str, RenderResult]) -> None:
    head = estimate(rendered["prod"]).to_json()
    base = copy.deepcopy(head)
    (system,) = [ln for ln in base["lines"] if ln["resource"] == "cluster-system"]
    system["monthly_max"] -= 100.0
    base["total"]["monthly_max"] = round(base["total"]["monthly_max"] - 100.0, 2)
    markdown = diff(base, head)
    assert "| max / month |" in markdown and "**+$100.00**" in markdown and "**+$0.00**" in markdown
    rows = markdown.splitlines()
    start = rows.index("| resource | base | this PR | delta min / max |") + 2
    changed = rows[start:rows.index("", start)]  # only what changed, not every line
    assert len(changed) == 1 and changed[0].startswith("| cluster-system |") and "+$0.00 / +$100.00" in changed[0]
    assert "No priced resource changed." in diff(head, head)
    assert "no estimate for the base branch" in diff({}, head)


# --- the budget per environment ------------------------------------------------------------------

@pytest.mark.parametrize("stack", AWS_STACKS)
def test_each_aws_environment_has_a_budget_alerting_its_target(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    budget = result.one("aws:budgets/budget:Budget")
    env = result.outputs["environment"]
    kind = load_stack_config(stack_file(stack))["mlops-platform:kind"]
    assert budget.inputs["name"] == f"mlops-{env}" and budget.inputs["timeUnit"] == "MONTHLY"
    assert float(budget.inputs["limitAmount"]) == BUDGET_USD_BY_KIND[kind]
    assert budget.inputs["costFilters"] == [{"name": "TagKeyValue", "values": [f"user:environment${env}"]}]
    # No alert target in the stack files: the budget's own topic, which only AWS Budgets may publish to.
    topic = result.one("aws:sns/topic:Topic")
    policy = json.loads(result.one("aws:sns/topicPolicy:TopicPolicy").inputs["policy"])
    (statement,) = policy["Statement"]
    assert statement["Principal"] == {"Service": "budgets.amazonaws.com"} and statement["Action"] == "SNS:Publish"
    assert "aws:SourceAccount" in statement["Condition"]["StringEquals"]
    kinds = set()
    for notification in budget.inputs["notifications"]:
        kinds.add(notification["notificationType"])
        assert notification["subscriberSnsTopicArns"] == [f"arn:aws:sns:us-east-1:123456789012:{topic.name}"]
    assert kinds == {"ACTUAL", "FORECASTED"}


def test_local_has_no_budget(rendered: dict[str, RenderResult]) -> None:
    assert not rendered["local"].of_type("aws:budgets/budget:Budget")


def test_budget_uses_the_configured_targets_and_amount() -> None:
    arn = "arn:aws:sns:us-east-1:123456789012:ml-platform-alerts"
    workloads = copy.deepcopy(load_stack_config(stack_file("staging"))["mlops-platform:workloads"])
    workloads["monitoring"]["alertSnsTopicArn"] = arn
    result = render_with("staging", workloads=workloads,
                         budget={"monthlyUsd": 1234.5, "alertEmails": ["ml-platform@example.com"]})
    budget = result.one("aws:budgets/budget:Budget")
    assert budget.inputs["limitAmount"] == "1234.50"
    for notification in budget.inputs["notifications"]:
        assert notification["subscriberSnsTopicArns"] == [arn]  # the monitoring alert topic, by default
        assert notification["subscriberEmailAddresses"] == ["ml-platform@example.com"]
    assert not result.of_type("aws:sns/topic:Topic")
    report = estimate(result)
    assert report.budget_usd == 1234.5 and report.total_max > 1234.5


@pytest.mark.parametrize("budget, expected", [
    ({"monthlyUsd": -5}, "mlops-platform:budget.monthlyUsd: -5 must be greater than 0"),
    ({"alertEmails": ["not-an-email"]}, "mlops-platform:budget.alertEmails[0]: \"not-an-email\" does not match"),
    ({"alertSnsTopicArn": "arn:aws:sqs:us-east-1:123456789012:q"}, "mlops-platform:budget.alertSnsTopicArn:"),
    ({"assumedS3Gb": -1}, "mlops-platform:budget.assumedS3Gb: -1 is below 0"),
    ({"monthlyUSD": 10}, "mlops-platform:budget.monthlyUSD: 10 is not a known key"),
])
def test_bad_budget_config_names_the_key(budget: dict[str, Any], expected: str) -> None:
    raw = {"name": "dev", "kind": "dev", "tags": {"owner": "me", "costCenter": "x"}, "budget": budget}
    with pytest.raises(ConfigError) as error:
        parse_environment(raw)
    assert str(error.value).startswith(expected)


# --- the preview workflow posts the estimate next to Pulumi's diff -------------------------------

def test_preview_workflow_posts_the_cost_delta_against_the_base_branch() -> None:
    path = ROOT / ".github" / "workflows" / "preview.yml"
    (job,) = yaml.safe_load(path.read_text())["jobs"].values()
    steps = job["steps"]
    checkouts = [s for s in steps if s.get("uses", "").startswith("actions/checkout@")]
    base = [s for s in checkouts if s.get("with", {}).get("path") == "base"]
    assert len(base) == 1 and base[0]["with"]["ref"] == "${{ github.event.pull_request.base.sha }}"
    runs = [s.get("run", "") for s in steps]
    base_run = next(r for r in runs if "--cost --json" in r)
    assert "cd base" in base_run and "mlops plan" in base_run and "base-cost.json" in base_run
    head_run = next(r for r in runs if "--baseline" in r)
    assert "mlops plan" in head_run and "--cost" in head_run and "base-cost.json" in head_run
    comment = [s for s in steps if "sticky-pull-request-comment" in s.get("uses", "")]
    assert len(comment) == 1 and "matrix.stack" in comment[0]["with"]["header"]
    names = [s.get("uses", s.get("run", "")) for s in steps]
    assert names.index("pulumi/actions@v6") < names.index(comment[0]["uses"])
    check = subprocess.run([str(ROOT / ".venv" / "bin" / "check-jsonschema"), "--builtin-schema",
                            "vendor.github-workflows", str(path)], capture_output=True, text=True, timeout=60,
                           check=False)
    assert check.returncode == 0, check.stdout + check.stderr


# --- the command -----------------------------------------------------------------------------------

def test_mlops_plan_cost_prints_json_and_the_delta_against_a_baseline(tmp_path) -> None:  # noqa: ANN001
    from typer.testing import CliRunner

    from workloads.cli import app

    runner = CliRunner()
    head = runner.invoke(app, ["plan", "ci", "--cost", "--json"])
    assert head.exit_code == 0, head.output
    report = json.loads(head.stdout)
    assert report["stack"] == "ci" and report["total"]
    cheaper = copy.deepcopy(report)
    cheaper["lines"] = cheaper["lines"][:1]
    base = tmp_path / "base-cost.json"
    base.write_text(json.dumps(cheaper))
    delta = runner.invoke(app, ["plan", "ci", "--cost", "--baseline", str(base)])
    assert delta.exit_code == 0, delta.output
    assert delta.stdout == diff(cheaper, report) + "\n"
    table = runner.invoke(app, ["plan", "ci", "--cost"])
    assert table.exit_code == 0 and "total" in table.stdout
