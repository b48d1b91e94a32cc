"""Each workload's MLflow user against a real `mlflow server --app-name basic-auth`, as rendered.

The local stack is rendered with a database password holding `%`, `@`, `/`, `:`, a space and `#`;
a Postgres role with that password owns a database created here (and dropped afterwards) on the
local Postgres. The tracking Deployment's two init containers run exactly as rendered (the kubelet
emulation: rendered command, env, Secret volumes), so the DSN's encoding and basic_auth.ini's
escaping are exercised by MLflow's own readers (alembic's and the auth app's configparser). Then
the server starts with the rendered env, basic_auth.ini and command, only on a free port and with
a local artifact directory instead of S3, and is stopped by its pid.

Each boundary is then tried with the rendered users' credentials: what a workload needs works, and
what it must not do is refused with 403. The rendered metrics sidecar serves the server's request
metrics to the metrics user. Last, the user-creation step runs again against the
running server: idempotent, it deletes users that left the plan, and it applies rotated passwords
(the admin's and a workload's) without a server restart.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy
import yaml
from sqlalchemy.pool import NullPool

from components.migrations import CONTAINER as MIGRATE
from components.mlflow_users import CONTAINER as PROVISION
from components.render import RenderResult, render_stack
from tests.contract.kubelet import BIN, Kubelet, Outcome, argv_of, resolve_env
from tests.contract.stand_ins import cluster_for, free_port
from tests.infra.helpers import manifest, pod_spec

pytestmark = pytest.mark.servers
ADMIN_DSN = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
ADMIN_PASSWORD = "a-very-secret-admin-password"
HOSTILE_PASSWORD = "p%40ss@w/rd%:x y#"
RENDERED_HOST = "@postgres.mlops-local.svc.cluster.local:5432/mlflow"


@dataclass
class Stack:
    result: RenderResult
    kubelet: Kubelet
    pod: dict[str, Any]
    url: str
    tmp: Path

    def users(self) -> dict[str, tuple[str, str]]:
        secrets = self.kubelet.cluster.secrets
        return {name.removeprefix("mlflow-user-"): (data["MLFLOW_TRACKING_USERNAME"], data["MLFLOW_TRACKING_PASSWORD"])
                for name, data in secrets.items() if name.startswith("mlflow-user-")}

    def admin(self) -> tuple[str, str]:
        return "admin", self.kubelet.cluster.secrets["mlflow-server"]["admin-password"]

    def provision(self) -> Outcome:
        """The rendered `provision-users` init container, run as a kubelet would."""
        container = next(c for c in self.pod["initContainers"] if c["name"] == PROVISION)
        return self.kubelet.run_job(PROVISION, self.pod, container, deadline=300)


@contextlib.contextmanager
def as_user(credentials: tuple[str, str], url: str | None = None) -> Iterator[None]:
    """MLflow's clients as this user; with `url`, its fluent API pointed there for the block only (a
    module fixture's `mlflow.set_tracking_uri` would outlive the module)."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = credentials
    try:
        with _use_tracking_uri(url) if url else contextlib.nullcontext():
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def refused(action: Callable[[], Any]) -> str:
    """Run `action`, which must be refused by the server's authorization (403)."""
    try:
        action()
    except Exception as error:  # noqa: BLE001 - MlflowException, RestException or an HTTPError: judged below
        text = str(error)
        assert "403" in text or "PERMISSION_DENIED" in text or "Permission denied" in text, text
        return text
    pytest.fail("allowed, but the user has no such permission")


@contextlib.contextmanager
def hostile_database() -> Iterator[tuple[str, str]]:
    """A role whose password is HOSTILE_PASSWORD and the empty database it owns: (role, database)."""
    name = f"mlops_auth_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(ADMIN_DSN, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE ROLE "{name}" LOGIN PASSWORD :password'),
                         {"password": HOSTILE_PASSWORD})
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}" OWNER "{name}"'))
    except sqlalchemy.exc.OperationalError as error:
        pytest.skip(f"no Postgres on 127.0.0.1:5432: {error}")
    try:
        yield name, name
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sqlalchemy.text(f'DROP ROLE IF EXISTS "{name}"'))


def point_at(text: str, role: str, database: str) -> str:
    """The rendered DSN (in the DSN or in basic_auth.ini) with the local role, host and database; the
    password stays exactly as rendered."""
    assert text.count("://mlflow:") == 1 and text.count(RENDERED_HOST) == 1, text
    return text.replace("://mlflow:", f"://{role}:").replace(RENDERED_HOST, f"@127.0.0.1:5432/{database}")


def start_server(stack_pod: dict[str, Any], kubelet: Kubelet, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    """The rendered server container, but on a free port and with local artifacts (no S3 here)."""
    container = stack_pod["containers"][0]
    env = resolve_env(container, kubelet.cluster)
    (tmp / "etc").mkdir()
    (tmp / "etc" / "basic_auth.ini").write_text(kubelet.cluster.secrets["mlflow-server"]["basic_auth.ini"])
    port = free_port()
    env.update({"MLFLOW_AUTH_CONFIG_PATH": str(tmp / "etc" / "basic_auth.ini"), "HOME": str(tmp),
                "PATH": f"{BIN}:/usr/bin:/bin"})
    argv = argv_of(container, env)
    argv[argv.index("--port") + 1] = str(port)
    argv[argv.index("--host") + 1] = "127.0.0.1"
    argv[argv.index("--artifacts-destination") + 1] = str(tmp / "artifacts")
    argv[argv.index("--workers") + 1] = "1"
    argv[argv.index("--expose-prometheus") + 1] = str(tmp / "prometheus")  # the pod's /tmp emptyDir
    log = (tmp / "server.log").open("wb")
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return process, url
        time.sleep(0.5)
    stop(process)
    pytest.fail(f"the tracking server did not start:\n{(tmp / 'server.log').read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's own process group (mlflow and its uvicorn worker), by its pid."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    result = render_stack("local", secrets={"trackingAdminPassword": ADMIN_PASSWORD,
                                            "databasePassword": HOSTILE_PASSWORD})
    with hostile_database() as (role, database):
        cluster = cluster_for(result, s3_url="http://127.0.0.1:9", database_uri=ADMIN_DSN,
                              api_url="http://127.0.0.1:9")
        server = manifest(result, "Secret", "mlflow-server")["stringData"]
        cluster.secrets["mlflow-server"].update({key: point_at(server[key], role, database)
                                                 for key in ("backend-store-uri", "basic_auth.ini")})
        kubelet = Kubelet(cluster)
        pod = pod_spec(manifest(result, "Deployment", "mlflow"))
        for init in pod["initContainers"]:
            assert [c["name"] for c in pod["initContainers"]] == [MIGRATE, PROVISION]
            outcome = kubelet.run_job(init["name"], pod, init, deadline=300)
            assert outcome.exit_code == 0, f"{init['name']}:\n{outcome.log}"
        tmp = tmp_path_factory.mktemp("tracking")
        process, url = start_server(pod, kubelet, tmp)
        try:
            yield Stack(result, kubelet, pod, url, tmp)
        finally:
            stop(process)


@pytest.fixture(scope="module")
def champion(stack: Stack) -> str:
    """What `mlops train` does, as the training user: a run in its experiment, a version, the alias."""
    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).random((60, 3))
    model = LogisticRegression().fit(x, (x[:, 0] > 0.5).astype(int))
    with as_user(stack.users()["training-churn"], stack.url):
        client = mlflow.MlflowClient(stack.url)
        experiment = client.get_experiment_by_name("churn").experiment_id
        run = client.create_run(experiment)
        with mlflow.start_run(run_id=run.info.run_id):
            # Declared requirements: inferring them imports the model in a subprocess (slow, and beside the point).
            logged = mlflow.sklearn.log_model(model, name="model", input_example=x[:2],
                                              pip_requirements=["scikit-learn"])
        client.get_registered_model("churn")  # created by the stack, before any workload ran
        version = client.create_model_version("churn", logged.model_uri, run_id=run.info.run_id,
                                               model_id=logged.model_id, await_creation_for=0)
        client.set_registered_model_alias("churn", "champion", version.version)
    return str(version.version)


# --- what each user may do, and may not --------------------------------------------------------

def test_the_stack_created_every_planned_user_with_its_grants(stack: Stack) -> None:
    from mlflow.server.auth.client import AuthServiceClient
    from mlflow.tracking import MlflowClient

    with as_user(stack.admin()):
        auth, client = AuthServiceClient(stack.url), MlflowClient(stack.url)
        ids = {name: client.get_experiment_by_name(name).experiment_id for name in ("churn", "monitoring/churn")}
        made_by_the_server = client.create_experiment(f"by-the-api-{uuid.uuid4().hex[:6]}")
        # Created by the init container as the server would have: the same artifact location scheme.
        for experiment in [*ids.values(), made_by_the_server]:
            assert client.get_experiment(experiment).artifact_location == f"mlflow-artifacts:/{experiment}"
        expected = {
            "mlops-training-churn": {("experiment", ids["churn"]): "EDIT", ("registered_model", "churn"): "EDIT"},
            "mlops-serving-churn": {("experiment", ids["churn"]): "READ", ("registered_model", "churn"): "READ",
                                    ("experiment", ids["monitoring/churn"]): "NO_PERMISSIONS"},
            "mlops-monitoring-churn": {("experiment", ids["churn"]): "READ", ("registered_model", "churn"): "READ",
                                       ("experiment", ids["monitoring/churn"]): "EDIT"},
            "mlops-metrics-scraper": {("experiment", ids["churn"]): "NO_PERMISSIONS",
                                      ("registered_model", "churn"): "NO_PERMISSIONS"},
        }
        for user, grants in expected.items():
            for (kind, resource), permission in grants.items():
                assert auth.get_user_permission(user, kind, resource).permission == permission, (user, kind)
            assert not auth.get_user(user).is_admin


def test_training_edits_its_experiment_and_model_and_nothing_else(stack: Stack, champion: str) -> None:
    import mlflow

    with as_user(stack.admin()):
        admin = mlflow.MlflowClient(stack.url)
        admin.create_registered_model(other := f"other-{uuid.uuid4().hex[:6]}")
        elsewhere = admin.create_experiment(f"elsewhere-{uuid.uuid4().hex[:6]}")
    with as_user(stack.users()["training-churn"]):
        client = mlflow.MlflowClient(stack.url)
        assert client.get_model_version_by_alias("churn", "champion").version == champion
        client.log_metric(client.get_model_version("churn", champion).run_id, "holdout_auc", 0.9)
        refused(lambda: client.delete_registered_model(other))  # another model: not even visible
        refused(lambda: client.create_model_version(other, f"models:/churn/{champion}"))
        refused(lambda: client.delete_registered_model("churn"))  # its own model: EDIT, not MANAGE
        refused(lambda: client.create_run(elsewhere))
        refused(lambda: client.create_run(client.get_experiment_by_name("monitoring/churn").experiment_id))


def test_serving_reads_its_model_and_cannot_register_one(stack: Stack, champion: str) -> None:
    import mlflow
    import numpy as np

    with as_user(stack.users()["serving-churn"], stack.url):
        model = mlflow.pyfunc.load_model("models:/churn@champion")  # the alias, then the files under the run
        assert model.predict(np.array([[0.9, 0.1, 0.1]])).tolist() in ([0], [1])
        client = mlflow.MlflowClient(stack.url)
        version = client.get_model_version("churn", champion)
        refused(lambda: client.create_model_version("churn", version.source, run_id=version.run_id))
        refused(lambda: mlflow.register_model(f"models:/churn/{champion}", "churn"))
        refused(lambda: client.set_registered_model_alias("churn", "champion", champion))
        refused(lambda: client.set_model_version_tag("churn", champion, "approved", "yes"))
        refused(lambda: client.create_run(client.get_experiment_by_name("churn").experiment_id))
        refused(lambda: client.get_experiment_by_name("monitoring/churn"))


def test_monitoring_reads_the_model_and_writes_only_its_experiment(stack: Stack, champion: str) -> None:
    import mlflow

    with as_user(stack.admin()):
        elsewhere = mlflow.MlflowClient(stack.url).create_experiment(f"elsewhere-{uuid.uuid4().hex[:6]}")
    with as_user(stack.users()["monitoring-churn"], stack.url):
        client = mlflow.MlflowClient(stack.url)
        assert mlflow.pyfunc.load_model("models:/churn@champion") is not None
        run = client.create_run(client.get_experiment_by_name("monitoring/churn").experiment_id)
        client.log_metric(run.info.run_id, "drift_share", 0.1)
        client.log_text(run.info.run_id, "{}", "summary.json")  # artifacts through the proxy, its experiment
        client.set_terminated(run.info.run_id)
        training = client.get_experiment_by_name("churn").experiment_id
        refused(lambda: client.create_run(training))
        refused(lambda: client.log_metric(client.get_model_version("churn", champion).run_id, "x", 1.0))
        refused(lambda: client.create_run(elsewhere))
        refused(lambda: client.set_registered_model_alias("churn", "champion", champion))
        refused(lambda: client.delete_run(run.info.run_id))  # its experiment: EDIT, not MANAGE


def test_the_metrics_user_is_authenticated_and_sees_nothing(stack: Stack) -> None:
    import mlflow

    scraper = stack.kubelet.cluster.secrets["tracking-credentials"]  # what the ServiceMonitor's basic auth reads
    with as_user((scraper["MLFLOW_TRACKING_USERNAME"], scraper["MLFLOW_TRACKING_PASSWORD"])):
        client = mlflow.MlflowClient(stack.url)
        assert client.search_experiments() == []
        refused(lambda: client.get_registered_model("churn"))
    assert httpx.get(f"{stack.url}/api/2.0/mlflow/experiments/search?max_results=1").status_code == 401


def start_metrics_sidecar(stack: Stack) -> tuple[subprocess.Popen[bytes], str]:
    """The rendered metrics sidecar, on the server's metric files (start_server's stand-in for /tmp) and a free port."""
    from components.tracking import METRICS_CONTAINER, METRICS_PORT, PROMETHEUS_DIR

    container = next(c for c in stack.pod["containers"] if c["name"] == METRICS_CONTAINER)
    env = {**resolve_env(container, stack.kubelet.cluster), "HOME": str(stack.tmp), "PATH": f"{BIN}:/usr/bin:/bin"}
    port = free_port()
    argv = [a.replace(PROMETHEUS_DIR, str(stack.tmp / "prometheus")) for a in argv_of(container, env)]
    argv[argv.index(str(METRICS_PORT))] = str(port)
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}/metrics"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url, timeout=2)  # any answer: it listens
            return process, url
        time.sleep(0.2)
    stop(process)
    pytest.fail(f"the metrics sidecar did not start: {argv}")


def test_the_scraper_reads_the_servers_request_metrics_from_the_sidecar(stack: Stack) -> None:
    """`--expose-prometheus` as rendered, summed by the rendered sidecar and read as the metrics user: every
    tracking-server series the dashboards and alert rules read is there. MLflow's own /metrics refuses that
    user (3.17's fail-closed basic auth: admin only), which is why the sidecar exists."""
    from prometheus_client.parser import text_string_to_metric_families

    from components.manifests import to_manifests
    from components.observability import dashboard_sources
    from components.stack_metrics import STACK_METRICS
    from tests.infra.test_observability import exprs_of, promql_metric_names

    scraper = stack.kubelet.cluster.secrets["tracking-credentials"]
    auth = (scraper["MLFLOW_TRACKING_USERNAME"], scraper["MLFLOW_TRACKING_PASSWORD"])
    # One API request, so the request histogram has series; and why the sidecar exists.
    assert httpx.get(f"{stack.url}/api/2.0/mlflow/experiments/search?max_results=1", auth=auth,
                     timeout=10).status_code == 200
    assert httpx.get(f"{stack.url}/metrics", auth=auth, timeout=10).status_code == 403
    process, url = start_metrics_sidecar(stack)
    try:
        assert httpx.get(url, timeout=10).status_code == 401
        assert httpx.get(url, auth=(auth[0], "not-the-password"), timeout=10).status_code == 401
        response = httpx.get(url, auth=auth, timeout=10)  # as the ServiceMonitor's basic auth
    finally:
        stop(process)
    assert response.status_code == 200, response.text[:500]
    samples = {(s.name, s.labels.get("status")) for f in text_string_to_metric_families(response.text)
               for s in f.samples}
    exported = {name for name, _ in samples}
    [rules] = [m["data"]["mlops-alerts.rules.yaml"] for m in to_manifests(stack.result)
               if m["metadata"]["name"] == "mlops-alert-rules"]
    expressions = [e for d in dashboard_sources().values() for _, e in exprs_of(d)]
    expressions += [r["expr"] for g in yaml.safe_load(rules)["groups"] for r in g["rules"]]
    used = {n for e in expressions for n in promql_metric_names(e) if n.startswith("mlflow_")}
    assert used and used <= exported, sorted(used - exported)
    assert STACK_METRICS["mlflow-server"] <= exported, sorted(STACK_METRICS["mlflow-server"] - exported)
    assert ("mlflow_http_request_total", "200") in samples  # the dashboards split requests by status


# --- the user-creation step again, against the running server ---------------------------------

def test_provisioning_again_is_idempotent_and_removes_users_that_left_the_plan(stack: Stack) -> None:
    from mlflow.server.auth.client import AuthServiceClient

    with as_user(stack.admin()):
        AuthServiceClient(stack.url).create_user("mlops-serving-retired", "a-retired-password-1")
        AuthServiceClient(stack.url).create_user("alice", "a-human-password-1")  # not managed: kept
    outcome = stack.provision()
    assert outcome.exit_code == 0, outcome.log
    assert "user mlops-serving-churn: unchanged" in outcome.log and "admin admin: unchanged" in outcome.log
    assert "user mlops-serving-retired: deleted" in outcome.log and "alice" not in outcome.log
    with as_user(stack.admin()):
        users = {u["username"] for u in httpx.get(f"{stack.url}/api/2.0/mlflow/users/list",
                                                  auth=stack.admin(), timeout=10).json()["users"]}
    assert "mlops-serving-retired" not in users and {"alice", "mlops-training-churn"} <= users


def test_rotated_passwords_take_effect_when_the_step_runs(stack: Stack, champion: str) -> None:
    """What `pulumi up` after a rotation does: the Secrets change, the checksum rolls the tracking pods,
    their init container applies the new passwords. The server itself is not restarted here."""
    import json

    secrets = stack.kubelet.cluster.secrets
    old_admin, new_admin = stack.admin()[1], "a-rotated-admin-password"
    old_serving = stack.users()["serving-churn"]
    document = json.loads(secrets["mlflow-users"]["users.json"])
    for user in document["users"]:
        if user["username"] == old_serving[0]:
            user["password"] = "a-rotated-serving-password"
    secrets["mlflow-users"]["users.json"] = json.dumps(document)
    secrets["mlflow-server"]["admin-password"] = new_admin
    try:
        outcome = stack.provision()
        assert outcome.exit_code == 0, outcome.log
        assert "admin admin: password reset" in outcome.log and f"{old_serving[0]}: password reset" in outcome.log
        listing = f"{stack.url}/api/2.0/mlflow/users/list"
        assert httpx.get(listing, auth=("admin", new_admin), timeout=10).status_code == 200
        assert httpx.get(listing, auth=("admin", old_admin), timeout=10).status_code == 401
        search = f"{stack.url}/api/2.0/mlflow/registered-models/get?name=churn"
        assert httpx.get(search, auth=(old_serving[0], "a-rotated-serving-password"), timeout=10).status_code == 200
        assert httpx.get(search, auth=old_serving, timeout=10).status_code == 401
    finally:
        secrets["mlflow-server"]["admin-password"] = old_admin
