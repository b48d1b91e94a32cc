"""Every rendered `mlops` container, in all five stacks, parsed by the real CLI with its rendered environment.

For each container of the workload image (Deployments, CronJob templates, Jobs, and the
retraining Jobs in the `retrain-jobs` ConfigMap, as mounted and as the monitor submits them with
`--data`): argv is the rendered `command` + `args` (the image's ENTRYPOINT `mlops` when only
`args` are given), `$(VAR)` expanded from the container's environment as a kubelet does
(`JOB_COMPLETION_INDEX=0` in an Indexed Job), the environment resolved from `env`/`envFrom`
(ConfigMaps of the render; Secret values are test strings). Then
`mlops --check <command> ...` runs in-process: exit 0, and the settings it prints equal what the
stack config asked for. `mlflow server` (the tracking container, same image) is not the mlops CLI
and is run by test_rendered_runs.py instead.

The break tests render with a deliberately broken container and show the check failing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from typer.testing import CliRunner

import components.jobs
import components.serving
from components.config import EnvironmentConfig, parse_environment
from components.manifests import to_manifests
from components.render import RenderResult, load_stack_config, render_stack, stack_file
from tests.contract.kubelet import IMAGE_ENTRYPOINT, Cluster, container_port, expand, resolve_env
from workloads.cli import app
from workloads.monitoring.retrain_jobs import with_data
from workloads.settings import MonitorSettings, ServeSettings, TrainSettings

STACKS = ["dev", "staging", "prod", "ci", "local"]
ADMIN_PASSWORD = "a-very-secret-admin-password"
RETRAIN_DATA = "s3://capture-bucket/monitoring/churn/retrain/run-0.parquet"
# Containers of the workload image that run something other than the mlops CLI (what, and why skipped).
NOT_MLOPS = {"mlflow": "the tracking server: run as a process by test_rendered_runs.py",
             "python": "the tracking schema migration (components/migrations.py), run by test_rendered_runs.py"}


@dataclass
class Container:
    """One rendered container of the workload image and what it should run with."""

    where: str  # e.g. "CronJob train-churn"
    workload: str  # the name its expected settings are keyed by
    container: dict[str, Any]
    pod: dict[str, Any]
    extra_env: dict[str, str] = field(default_factory=dict)


@dataclass
class Checked:
    where: str
    argv: list[str]
    exit_code: int
    output: str
    settings: dict[str, Any] | None


def _env_config(stack: str, config: dict[str, Any] | None = None) -> EnvironmentConfig:
    config = config if config is not None else load_stack_config(stack_file(stack))
    return parse_environment({k.removeprefix("mlops-platform:"): v for k, v in config.items()
                              if k.startswith("mlops-platform:") and not (isinstance(v, dict) and "secure" in v)})


def _pod(where: str, workload: str, pod: dict[str, Any], env: dict[str, str] | None = None) -> list[Container]:
    return [Container(where, workload, c, pod, env or {}) for c in [*pod.get("initContainers", []), *pod["containers"]]]


def _job(name: str, spec: dict[str, Any], kind: str, workload: str) -> list[Container]:
    indexed = {"JOB_COMPLETION_INDEX": "0"} if spec.get("completionMode") == "Indexed" else {}
    return _pod(f"{kind} {name}", workload, spec["template"]["spec"], indexed)


def rendered_containers(manifests: list[dict[str, Any]]) -> list[Container]:
    found: list[Container] = []
    for m in manifests:
        name = m["metadata"].get("name", m["metadata"].get("generateName", ""))
        if m["kind"] in ("Deployment", "StatefulSet"):
            found += _pod(f"{m['kind']} {name}", name, m["spec"]["template"]["spec"])
        elif m["kind"] == "CronJob":
            found += _job(name, m["spec"]["jobTemplate"]["spec"], "CronJob", name)
        elif m["kind"] == "Job":
            found += _job(name, m["spec"], "Job", name)
        elif m["kind"] == "ConfigMap" and name == "retrain-jobs":
            for key, text in sorted(m["data"].items()):
                job = json.loads(text)
                template = job["metadata"]["generateName"].removesuffix("-retrain-")
                found += _job(key, job["spec"], "retrain-jobs", template)
                # What the monitor submits: the same Job with `--data <newest data>` (workloads/monitoring).
                found += _job(f"{key} + --data", with_data(job, RETRAIN_DATA)["spec"], "retrain-jobs",
                              f"{template} --data")
    return found


def workload_image(c: dict[str, Any], env: EnvironmentConfig) -> bool:
    return str(c.get("image", "")).split("@")[0].rsplit(":", 1)[0] == env.workloads.image


def cluster_of(manifests: list[dict[str, Any]]) -> Cluster:
    configmaps = {m["metadata"]["name"]: dict(m.get("data") or {}) for m in manifests if m["kind"] == "ConfigMap"}
    secrets = {m["metadata"]["name"]: {k: f"test-{k.lower()}" for k in {**m.get("data", {}), **m.get("stringData", {})}}
               for m in manifests if m["kind"] == "Secret"}
    return Cluster(configmaps=configmaps, secrets=secrets, namespace="contract-test")


def run_check(item: Container, cluster: Cluster) -> Checked:
    env = {**resolve_env(item.container, cluster), **item.extra_env}
    argv = [expand(a, env) for a in [*(item.container.get("command") or IMAGE_ENTRYPOINT),
                                     *item.container.get("args", [])]]
    # Only what the pod has: nothing of this process's MLOPS_*/MLFLOW_* (envvar-backed options read them).
    isolated: dict[str, str | None] = {k: None for k in os.environ if k.startswith(("MLOPS_", "MLFLOW_"))}
    result = CliRunner().invoke(app, ["--check", *argv[1:]], env={**isolated, **env})
    settings = None
    if result.exit_code == 0:
        settings = json.loads(result.stdout.strip().splitlines()[-1])["settings"]
    return Checked(item.where, argv, result.exit_code, result.output, settings)


def expected_settings(env: EnvironmentConfig, capture_bucket: str) -> dict[str, dict[str, Any]]:
    """Workload -> the settings the stack config asks for, built from the config (not from components/)."""
    expected: dict[str, dict[str, Any]] = {}
    mon = env.workloads.monitoring
    for ep in env.serving.endpoints:
        expected[f"serve-{ep.name}"] = ServeSettings(
            model=ep.model, alias=ep.alias, host="0.0.0.0", port=8080, workers=ep.workers,
            max_batch_rows=ep.max_batch_rows, max_wait_ms=ep.max_wait_ms, capture=ep.capture,
            endpoint_name=ep.name).model_dump(mode="json")
        labels = ep.monitor_labels if isinstance(ep.monitor_labels, str) else \
            f"s3://{capture_bucket}/labels/{ep.name}/" if ep.monitor_labels else None
        expected[f"monitor-{ep.name}"] = MonitorSettings(
            endpoint=ep.name, model=ep.model, alias=ep.alias, window_hours=mon.window_hours, labels=labels,
            retrain=mon.retrain_job is not None, min_rows=mon.min_rows, drift_share=mon.drift_share,
            psi_threshold=mon.psi_threshold, metric_drop=mon.metric_drop, cooldown_hours=mon.cooldown_hours,
            alert_webhook=mon.alert_webhook, alert_sns_topic_arn=mon.alert_sns_topic_arn).model_dump(mode="json")
    for job in env.workloads.training:
        n = job.search_shards
        steps = {f"train-{job.name}": TrainSettings(spec=job.spec)} if n == 1 else {
            f"train-{job.name}": TrainSettings(spec=job.spec, shard=0, shards=n),
            f"train-{job.name}-select": TrainSettings(spec=job.spec, shards=n, select=True)}
        for name, settings in steps.items():
            expected[name] = settings.model_dump(mode="json")
            if mon.retrain_job == job.name:
                expected[f"{name} --data"] = settings.model_copy(update={"data": RETRAIN_DATA, "retraining": True}).model_dump(mode="json")
    return expected


def serving_port_problems(manifests: list[dict[str, Any]], item: Container, settings: dict[str, Any]) -> list[str]:
    """`mlops serve` must listen on all interfaces at the port its Service and probes reach."""
    labels = next(m for m in manifests if m["kind"] == "Deployment" and m["metadata"]["name"] == item.workload
                  )["spec"]["template"]["metadata"]["labels"]
    services = [m for m in manifests if m["kind"] == "Service"
                and m["spec"].get("selector") and m["spec"]["selector"].items() <= labels.items()]
    reached = {container_port(item.container, p["targetPort"]) for s in services for p in s["spec"]["ports"]}
    reached |= {container_port(item.container, item.container[p]["httpGet"]["port"])
                for p in ("readinessProbe", "livenessProbe", "startupProbe") if p in item.container}
    problems = [] if settings["host"] == "0.0.0.0" else [f"{item.where}: listens on {settings['host']}, not 0.0.0.0"]
    if not services or reached != {settings["port"]}:
        problems.append(f"{item.where}: listens on port {settings['port']}; Service/probes reach {sorted(reached)}")
    return problems


def contract_problems(result: RenderResult, env: EnvironmentConfig) -> tuple[list[str], list[Checked]]:
    """Every mlops container checked; a list of what is wrong (empty when the contract holds)."""
    manifests = to_manifests(result)
    cluster = cluster_of(manifests)
    expected = expected_settings(env, result.outputs["capture_bucket"])
    problems: list[str] = []
    checked: list[Checked] = []
    seen: set[str] = set()
    for item in rendered_containers(manifests):
        if not workload_image(item.container, env):
            continue
        program = (item.container.get("command") or IMAGE_ENTRYPOINT)[0]
        if program in NOT_MLOPS:
            continue
        check = run_check(item, cluster)
        checked.append(check)
        seen.add(item.workload)
        if program != "mlops" or check.exit_code != 0 or check.settings is None:
            problems.append(f"{item.where}: `mlops --check {' '.join(check.argv[1:])}` exited {check.exit_code}:\n"
                            f"{check.output}")
            continue
        if check.settings != expected.get(item.workload):
            problems.append(f"{item.where}: runs with {check.settings}\n  but the stack asks for "
                            f"{expected.get(item.workload)}")
        if item.workload.startswith("serve-"):
            problems += serving_port_problems(manifests, item, check.settings)
    problems += [f"{name}: expected in the render, no container runs it" for name in sorted(set(expected) - seen)]
    return problems, checked


@pytest.fixture(scope="module")
def renders() -> dict[str, RenderResult]:
    return {s: render_stack(s, secrets={"trackingAdminPassword": ADMIN_PASSWORD}) for s in STACKS}


@pytest.mark.parametrize("stack", STACKS)
def test_every_rendered_mlops_container_parses_as_the_stack_asks(renders: dict[str, RenderResult], stack: str) -> None:
    problems, checked = contract_problems(renders[stack], _env_config(stack))
    assert not problems, "\n".join(problems)
    commands = sorted({c.argv[1] for c in checked})
    assert commands == ["monitor", "serve", "train"], commands  # the check covered every workload kind


def test_every_settings_key_of_the_stack_reaches_the_cli() -> None:
    """Non-default values for every config key that feeds settings travel through the render unchanged."""
    config = load_stack_config(stack_file("dev"))
    config["mlops-platform:serving"]["endpoints"] = [
        {"name": "churn", "model": "churn", "alias": "challenger", "workers": 3, "maxBatchRows": 64,
         "maxWaitMs": 7.5, "capture": False, "monitorLabels": "s3://labeling-team/labels/churn/"},
        {"name": "spend", "model": "spend", "monitorLabels": False}]
    config["mlops-platform:workloads"]["training"][0]["searchShards"] = 3
    config["mlops-platform:workloads"]["monitoring"].update({
        "windowHours": 12.5, "minRows": 500, "driftShare": 0.5, "psiThreshold": 0.4, "metricDrop": 0.1,
        "cooldownHours": 0, "alertWebhook": "https://hooks.example.com/ml",
        "alertSnsTopicArn": "arn:aws:sns:us-east-1:123456789012:ml-alerts"})
    result = render_stack("dev", config=config, secrets={"trackingAdminPassword": ADMIN_PASSWORD})
    problems, checked = contract_problems(result, _env_config("dev", config))
    assert not problems, "\n".join(problems)
    # 2 endpoints, 2 monitors, the shards and select templates, and both retraining Jobs as mounted and as submitted.
    assert len(checked) == 2 + 2 + 2 + 2 * 2


# --- the check fails when the contract breaks -------------------------------------------------------


def _broken_render(monkeypatch: pytest.MonkeyPatch, module: Any, edit: Any) -> list[str]:
    real = module.to_args
    monkeypatch.setattr(module, "to_args", lambda *a, **k: edit(real(*a, **k)))
    result = render_stack("local", secrets={"trackingAdminPassword": ADMIN_PASSWORD})
    problems, _ = contract_problems(result, _env_config("local"))
    print("\n".join(problems))  # the closing note quotes one of these
    return problems


def test_an_option_the_cli_does_not_accept_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    problems = _broken_render(monkeypatch, components.serving, lambda args: [*args, "--max-batch", "64"])
    assert len(problems) == 1 and problems[0].startswith("Deployment serve-churn: `mlops --check serve")
    assert "exited 2" in problems[0] and "No such option: --max-batch" in problems[0]


def test_a_required_option_missing_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def drop_model(args: list[str]) -> list[str]:  # training has no --model: only the monitor breaks
        i = args.index("--model") if "--model" in args else len(args)
        return args[:i] + args[i + 2:]

    problems = _broken_render(monkeypatch, components.jobs, drop_model)
    assert len(problems) == 1 and problems[0].startswith("CronJob monitor-churn:")
    assert "Missing option '--model'" in problems[0]


def test_settings_in_variables_the_cli_never_reads_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # The defect this contract removed: bare `mlops serve`, settings in MLOPS_SERVE_* variables.
    problems = _broken_render(monkeypatch, components.serving, lambda args: [])
    assert "Missing option '--model'" in problems[0]


def test_a_value_the_cli_parses_differently_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    # Parses, but not as asked: the loopback address (the Service can't reach it) and another port.
    def loopback(args: list[str]) -> list[str]:
        return [{"0.0.0.0": "127.0.0.1", "8080": "9090"}.get(a, a) for a in args]

    problems = _broken_render(monkeypatch, components.serving, loopback)
    assert any("listens on 127.0.0.1, not 0.0.0.0" in p for p in problems), problems
    assert any("listens on port 9090; Service/probes reach [8080]" in p for p in problems), problems
