"""What `pulumi up` renders must run: each stack's workloads started exactly as rendered, in order.

For the local stack (dev: in test_iam_enforced.py, under IAM; ci runs dev's pods): the MLflow tracking Deployment, the training template Job,
the serving Deployment(s), then the monitoring CronJob on normal and on drifted traffic; the
Jobs the drifted run creates are run too. Each is judged as Kubernetes would (see kubelet.py):
Deployments pass their readiness probe within their startup budget and stay alive, Jobs exit 0
within activeDeadlineSeconds, and no process tree exceeds its rendered memory limit (a cgroup
enforces it; peak PSS is reported). Outcomes are written to .mlops/contract/outcomes-<stack>.txt.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pandas as pd
import pyarrow.parquet as pq
import pytest

from components.manifests import to_manifests
from components.render import RenderResult, render_stack
from tests.contract.kubelet import SCRATCH_ROOT, Kubelet, Outcome, container_port
from tests.contract.stand_ins import TRACKING_PORT, JobsApi, S3Server, cluster_for, port_is_free
from workloads.data.sample import generate

pytestmark = pytest.mark.servers
ADMIN_PASSWORD = "a-very-secret-admin-password"
ROWS_PER_REQUEST = 20


class Run:
    """One stack's render, stand-ins and kubelet; the steps below use it in order."""

    def __init__(self, stack: str, result: RenderResult, database_uri: str, s3: S3Server | None = None) -> None:
        self.stack, self.result = stack, result
        self.manifests = to_manifests(result)
        # A given S3 server (the IAM-enforced suite's) belongs to the caller: it outlives the run.
        self.s3, self.owns_s3 = s3 or S3Server(), s3 is None
        self.api = JobsApi()
        self.kubelet = Kubelet(cluster_for(result, s3_url=self.s3.url, database_uri=database_uri,
                                           api_url=self.api.url))
        contract = self.kubelet.cluster.configmaps["workload-contract"]
        self.buckets = {k: contract[f"MLOPS_{k.upper()}_BUCKET"] for k in ("data", "artifact", "capture")}
        client = self.s3.client()
        for bucket in self.buckets.values():
            client.create_bucket(Bucket=bucket)
        self.labeler = client  # who writes ground truth: the labeler role's keys under IAM (test_iam_enforced)
        self.running: list[Any] = []

    def workload(self, kind: str, name: str) -> dict[str, Any]:
        return next(m for m in self.manifests if m["kind"] == kind and m["metadata"]["name"] == name)

    def of_kind(self, kind: str, component: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] == kind
                and m["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component]

    def stop(self) -> None:
        for process in self.running:
            process.stop()
        if self.owns_s3:
            self.s3.stop()
        self.api.stop()
        report = SCRATCH_ROOT / f"outcomes-{self.stack}.txt"
        report.write_text("\n".join(o.line() for o in self.kubelet.outcomes) + "\n")


def job_pod(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else workload["spec"]
    return spec


def run_job(run: Run, name: str, job_spec: dict[str, Any], extra_env: dict[str, str] | None = None) -> list[Outcome]:
    """Every pod of a Job spec (each index of an Indexed Job), judged by exit code within the deadline."""
    pod = job_spec["template"]["spec"]
    indexes = range(job_spec.get("completions", 1)) if job_spec.get("completionMode") == "Indexed" else [None]
    outcomes = []
    for index in indexes:
        env = {**(extra_env or {}), **({"JOB_COMPLETION_INDEX": str(index)} if index is not None else {})}
        outcomes.append(run.kubelet.run_job(f"{name}{'' if index is None else f'-{index}'}", pod,
                                            pod["containers"][0], deadline=job_spec["activeDeadlineSeconds"],
                                            extra_env=env))
    return outcomes


def start_deployment(run: Run, deployment: dict[str, Any]) -> tuple[Any, float, int]:
    pod = deployment["spec"]["template"]["spec"]
    for init in pod.get("initContainers", []):
        outcome = run.kubelet.run_job(f"{deployment['metadata']['name']}-{init['name']}", pod, init, deadline=300)
        assert outcome.exit_code == 0, f"{run.stack}: init container failed:\n{outcome.log}"
    container = pod["containers"][0]
    port = container_port(container, container["readinessProbe"]["httpGet"]["port"])
    assert port_is_free(port), f"port {port} (rendered containerPort) is taken on this machine"
    process, ready = run.kubelet.run_until_ready(deployment["metadata"]["name"], pod, container)
    run.running.append(process)
    if ready is None:
        process.stop()
        outcome = process.outcome()
        run.kubelet.outcomes.append(outcome)
        pytest.fail(f"{run.stack}: {deployment['metadata']['name']} never became ready:\n{outcome.log}")
    return process, ready, port


def finish(run: Run, process: Any, ready: float | None = None) -> Outcome:
    """Stop a long-running container (SIGTERM, like a rollout) and record its outcome."""
    alive = process.proc.poll() is None
    process.stop()
    run.running.remove(process)
    outcome = process.outcome(ready)
    run.kubelet.outcomes.append(outcome)
    assert alive, f"{run.stack}: {outcome.name} died while serving:\n{outcome.log}"
    return outcome


def seed_training_data(run: Run) -> None:
    """What `mlops env smoke` does before running a training template: sample data where the spec reads it."""
    buffer = io.BytesIO()
    generate(2000, 11).to_parquet(buffer, index=False)
    run.s3.client().put_object(Bucket=run.buckets["data"], Key="incoming/churn.parquet", Body=buffer.getvalue())


def send(url: str, frame: pd.DataFrame, prefix: str) -> list[str]:
    """Score `frame` in requests of ROWS_PER_REQUEST rows; the server's request ids, in order."""
    ids = []
    with httpx.Client(timeout=30) as client:
        for start in range(0, len(frame), ROWS_PER_REQUEST):
            chunk = frame.iloc[start:start + ROWS_PER_REQUEST]
            body = {"dataframe_split": json.loads(chunk.to_json(orient="split", index=False))}
            response = client.post(f"{url}/invocations", json=body,
                                   headers={"X-Request-Id": f"{prefix}-{start // ROWS_PER_REQUEST}"})
            assert response.status_code == 200, response.text
            ids.append(response.headers["X-Request-Id"])  # labels join on the server's id
    return ids


def wait_captured(run: Run, endpoint: str, rows: int, timeout: float = 60) -> None:
    """Capture flushes on its own schedule (the rendered capture settings): wait for the rows to land."""
    client = run.s3.client()
    deadline = time.monotonic() + timeout
    found = 0
    while time.monotonic() < deadline:
        keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=run.buckets["capture"], Prefix=f"captures/{endpoint}/") for o in page.get("Contents", [])
            if o["Key"].endswith(".parquet")]  # capture also writes per-flush summaries next to the Parquet
        found = sum(pq.read_metadata(io.BytesIO(client.get_object(Bucket=run.buckets["capture"], Key=k)["Body"]
                                                .read())).num_rows for k in keys)
        if found >= rows:
            return
        time.sleep(2)
    pytest.fail(f"{run.stack}: {found} of {rows} captured rows reached s3://{run.buckets['capture']}/captures/")


def write_labels(run: Run, endpoint: str, frame: pd.DataFrame, request_ids: list[str], name: str) -> None:
    """What a labeling process does: ground truth under labels/<endpoint>/ keyed by the server's request id and row."""
    index = pd.RangeIndex(len(frame))
    labels = pd.DataFrame({"request_id": [request_ids[i // ROWS_PER_REQUEST] for i in index],
                           "row": index % ROWS_PER_REQUEST, "label": frame["churned"].to_numpy()})
    buffer = io.BytesIO()
    labels.to_parquet(buffer, index=False)
    run.labeler.put_object(Bucket=run.buckets["capture"], Key=f"labels/{endpoint}/{name}.parquet",
                           Body=buffer.getvalue())


def monitor_summary(outcome: Outcome) -> dict[str, Any]:
    start = outcome.log.find("{")
    return json.loads(outcome.log[start:outcome.log.rfind("}") + 1]) if start >= 0 else {}


# dev runs this same flow in test_iam_enforced.py, with every pod holding exactly its IRSA role's
# policy against an S3 API that enforces it; ci renders dev's pods (test_ci_runs_the_pods_dev_runs),
# so one run of the flow per distinct set of pods keeps the suite short.
@pytest.fixture(params=["local"])
def run(request: pytest.FixtureRequest, pg_database: str) -> Iterator[Run]:
    assert port_is_free(TRACKING_PORT), f"port {TRACKING_PORT} is taken: the tracking container listens there"
    stack = request.param
    result = render_stack(stack, secrets={"trackingAdminPassword": ADMIN_PASSWORD})
    current = Run(stack, result, pg_database)
    try:
        yield current
    finally:
        current.stop()
        print(f"\n[{stack}]\n" + "\n".join(o.line() for o in current.kubelet.outcomes))


@pytest.mark.timeout(1800)  # a whole stack's flow: two trainings, a tracking server, serving, two monitors
def test_every_rendered_workload_runs_as_rendered(run: Run) -> None:
    # 1. The tracking server, with its init containers (migrations) first.
    tracking, tracking_ready, _ = start_deployment(run, run.workload("Deployment", "mlflow"))

    # 2. The training template(s): exactly what `kubectl create job --from=cronjob/train-<name>` runs.
    seed_training_data(run)
    for template in run.of_kind("CronJob", "training"):
        for outcome in run_job(run, template["metadata"]["name"], job_pod(template)):
            assert outcome.exit_code == 0, f"{run.stack}: {outcome.name} failed:\n{outcome.log}"

    # 3. Serving, 4. monitoring on normal then drifted traffic (with labels, so it can retrain).
    for deployment in run.of_kind("Deployment", "serving"):
        endpoint = deployment["metadata"]["labels"]["mlops-platform/endpoint"]
        serving, serving_ready, port = start_deployment(run, deployment)
        url = f"http://127.0.0.1:{port}"
        send(url, generate(300, 21, labels=False), "normal")
        wait_captured(run, endpoint, 300)
        monitor = run.workload("CronJob", f"monitor-{endpoint}")
        normal = run_job(run, f"monitor-{endpoint}-normal", job_pod(monitor))[0]
        assert normal.exit_code == 0, f"{run.stack}: monitor on normal traffic:\n{normal.log}"

        drifted = generate(1200, 22, shift=2.0, concept_drift=0.6)
        ids = send(url, drifted.drop(columns=["churned"]), "drifted")
        write_labels(run, endpoint, drifted, ids, "drifted")
        wait_captured(run, endpoint, 1500)
        before = len(run.api.created)
        outcome = run_job(run, f"monitor-{endpoint}-drifted", job_pod(monitor))[0]
        assert outcome.exit_code == 0, f"{run.stack}: monitor on drifted traffic:\n{outcome.log}"
        created = run.api.created[before:]
        assert created, f"{run.stack}: drift found but no retraining Job created:\n{outcome.log}"
        for job in created:  # 5. the retraining Job(s) the monitor created, run as created
            for retrain in run_job(run, job["metadata"]["name"], job["spec"]):
                assert retrain.exit_code == 0, f"{run.stack}: {retrain.name} failed:\n{retrain.log}"
        finish(run, serving, serving_ready)
    finish(run, tracking, tracking_ready)

    # Judged as a node would: nobody OOM-killed, every process tree under its memory limit.
    for outcome in run.kubelet.outcomes:
        assert not outcome.oom_killed, outcome.line()
        if outcome.limit_mib:
            assert outcome.peak_pss_mib < outcome.limit_mib, outcome.line()


# What a ci environment may differ in from dev without running anything differently: its names
# (namespace, stack, hosts; the cluster's is dev's), its monitoring schedule, and where the training
# pods are scheduled.
NOT_RUN = ("schedule", "nodeSelector", "tolerations", "affinity", "mlops-platform/credentials-checksum")


def _as_run(spec: Any, stack: str) -> Any:
    """A workload spec without what doesn't change how its containers run, with the stack's names neutral."""
    if isinstance(spec, dict):
        if spec.get("name") == "MLOPS_CLUSTER_NAME":  # a ci stack runs on dev's cluster: dev's name
            return {"name": "MLOPS_CLUSTER_NAME"}
        return {k: _as_run(v, stack) for k, v in spec.items() if k not in NOT_RUN}
    if isinstance(spec, list):
        return [_as_run(v, stack) for v in spec]
    if isinstance(spec, str):
        return "STACK" if spec == stack else spec.replace(f"mlops-{stack}", "mlops-STACK")
    return spec


def test_ci_runs_the_pods_dev_runs() -> None:
    """Why the ci stack has no flow of its own: every workload it renders runs exactly as dev's does
    (test_iam_enforced.py runs dev's, under IAM). A difference here needs ci's own flow again."""
    def workloads(stack: str) -> dict[str, Any]:
        result = render_stack(stack, secrets={"trackingAdminPassword": ADMIN_PASSWORD})
        return {f"{m['kind']}/{m['metadata']['name']}": _as_run(m["spec"], stack) for m in to_manifests(result)
                if m["kind"] in ("Deployment", "CronJob", "Job")}

    dev, ci = workloads("dev"), workloads("ci")
    assert set(ci) == set(dev)
    different = [name for name in ci if ci[name] != dev[name]]
    assert not different, f"ci renders these differently from dev: {different}"
