"""Scoped credentials everywhere (issue 14, section 3), asserted over the rendered stacks.

- No workload pod (serving, training, monitoring, and every Job the monitor may create) holds an
  administrator credential: the MLflow admin password and the users file are read by the tracking
  Deployment only, MinIO's root credential by MinIO and its setup Job only.
- Each pod holds its own MLflow user (and with MinIO its own S3 user); the plan's grants.
- A database password with `%`, `@`, `/` survives the DSN and configparser.
- The retraining admission policy's CEL, evaluated with cel-python (plus the Kubernetes strings
  library's `join` and `split`, which Kubernetes' CEL environment has and cel-python lacks) on the
  Jobs the monitor really creates and on Jobs that break each rule.
- The MinIO setup script, run with a recording `mc`.

The real tracking server's boundaries are tests/contract/test_mlflow_permissions.py.
"""

from __future__ import annotations

import configparser
import copy
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import celpy
import pytest
from celpy import celtypes
from sqlalchemy.engine import make_url

from components import mlflow_users, retrain_admission
from components.config import ConfigError
from components.credentials import S3_ACCOUNTS
from components.database import dsn_password
from components.minio_users import POLICY_MOUNT, env_name
from components.render import RenderResult, render_stack
from components.stack_file import load_stack_config, stack_file
from components.tracking import CHECKSUM_ANNOTATION, auth_config
from components.workload_iam import backup_policy, monitoring_policy, serving_policy, training_policy
from tests.infra.conftest import ADMIN_PASSWORD, ALL_STACKS
from tests.infra.helpers import manifest, manifests, pod_spec, workloads
from workloads.monitoring.retrain_jobs import with_data

MLFLOW_ADMIN = {"mlflow-server", "mlflow-users"}  # admin password, DSN, every user's password
MINIO_ROOT = "minio-credentials"
ROOT_READERS = {"minio", "storage-create-buckets"}
HOSTILE_PASSWORD = "p%40ss@w/rd%:x y#"


def secret_references(pod: dict[str, Any]) -> set[str]:
    """Every Secret a pod reads: env, envFrom, volumes (projected included)."""
    names: set[str] = set()
    for c in pod.get("initContainers", []) + pod["containers"]:
        names |= {e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                  if "secretKeyRef" in e.get("valueFrom", {})}
        names |= {s["secretRef"]["name"] for s in c.get("envFrom", []) if "secretRef" in s}
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            names.add(volume["secret"]["secretName"])
        names |= {s["secret"]["name"] for s in volume.get("projected", {}).get("sources", []) if "secret" in s}
    return names


def monitor_created_jobs(result: RenderResult) -> list[dict[str, Any]]:
    """The Jobs the monitor posts: the retrain-jobs manifests with its --data and --retraining."""
    found = [m for m in manifests(result, "ConfigMap") if m["metadata"]["name"] == "retrain-jobs"]
    data_uri = f"s3://{result.outputs['capture_bucket']}/monitoring/churn/retrain/0123abcd.parquet"
    return [with_data(json.loads(text), data_uri) for m in found for text in m["data"].values()]


def every_pod(result: RenderResult) -> list[tuple[str, dict[str, Any]]]:
    pods = [(w["metadata"]["name"], pod_spec(w)) for w in workloads(result)]
    return pods + [(j["metadata"]["generateName"], j["spec"]["template"]["spec"]) for j in monitor_created_jobs(result)]


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_no_workload_pod_holds_an_admin_credential(rendered: dict[str, RenderResult], stack: str) -> None:
    pods = every_pod(rendered[stack])
    assert any(name.startswith("train-churn-retrain") for name, _ in pods), "the monitor's Jobs are checked too"
    for name, pod in pods:
        refs = secret_references(pod)
        if refs & MLFLOW_ADMIN:
            assert name == "mlflow", f"{stack}: {name} reads {refs & MLFLOW_ADMIN}"
        if MINIO_ROOT in refs:
            assert name in ROOT_READERS, f"{stack}: {name} reads MinIO's root credential"


@pytest.mark.parametrize("stack", ALL_STACKS)
def test_each_workload_pod_holds_only_its_own_users(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    minio = stack == "local"
    expected = {"serve-churn": ("serving-churn", "serving", {"serve-churn-auth"}),
                "train-churn": ("training-churn", "training", set()),
                "monitor-churn": ("monitoring-churn", "monitoring", set())}
    pods = dict(every_pod(result))
    pods["train-churn-retrain"] = pods.pop("train-churn-retrain-")
    for name, (user, account, others) in {**expected, "train-churn-retrain": expected["train-churn"]}.items():
        own = {f"mlflow-user-{user}", *([f"minio-user-{account}"] if minio else [])}
        assert secret_references(pods[name]) == own | others, f"{stack}: {name}"
        for secret in own:
            data = manifest(result, "Secret", secret)["stringData"]
            identity = data.get("MLFLOW_TRACKING_USERNAME") or data["AWS_ACCESS_KEY_ID"]
            assert identity == f"mlops-{user if secret.startswith('mlflow') else account}"
    # The tracking server reaches MinIO as its own user too (the artifact prefix only); its metrics sidecar
    # checks the metrics user's credentials.
    if minio:
        assert secret_references(pod_spec(manifest(result, "Deployment", "mlflow"))) == {
            "mlflow-server", "mlflow-users", "minio-user-tracking", "tracking-credentials"}
        # The database backup and restore Jobs: Postgres, the passphrase, and their own MinIO user, not root.
        for cronjob in ("tracking-backup", "tracking-restore"):
            assert secret_references(pod_spec(manifest(result, "CronJob", cronjob))) == {
                "postgres-credentials", "tracking-backup", "minio-user-backup"}, cronjob
        assert manifest(result, "Secret", "minio-user-backup")["stringData"]["AWS_ACCESS_KEY_ID"] == "mlops-backup"


def test_the_plan_grants_the_narrowest_permission_that_works(rendered: dict[str, RenderResult]) -> None:
    result = rendered["dev"]
    users = json.loads(manifest(result, "Secret", "mlflow-users")["stringData"]["users.json"])["users"]
    grants = {u["username"]: {(g["type"], g["name"], g["permission"]) for g in u["grants"]} for u in users}
    model_reads = {("registered_model", "churn", "READ"), ("experiment", "churn", "READ")}
    assert grants == {
        "mlops-training-churn": {("experiment", "churn", "EDIT"), ("registered_model", "churn", "EDIT")},
        "mlops-serving-churn": model_reads,
        "mlops-monitoring-churn": model_reads | {("experiment", "monitoring/churn", "EDIT")},
        "mlops-metrics-scraper": set(),
    }
    for user in users:  # the file the init container applies holds exactly the passwords the pods get
        secret = mlflow_users.PlannedUser(user["username"], ()).secret
        assert manifest(result, "Secret", secret)["stringData"]["MLFLOW_TRACKING_PASSWORD"] == user["password"]
    secret = result.one("kubernetes:core/v1:Secret", "tracking-users")
    assert "stringData" in secret.secret_inputs


def test_a_spec_the_image_does_not_ship_is_a_config_error() -> None:
    config = load_stack_config(stack_file("dev"))
    config["mlops-platform:workloads"]["training"][0]["spec"] = "/somewhere/else.yaml"
    with pytest.raises(ConfigError, match=r"^mlops-platform:workloads\.training\[0\]\.spec: '/somewhere/else.yaml'"):
        render_stack("dev", config=config, secrets={"trackingAdminPassword": ADMIN_PASSWORD})


def test_a_rotated_admin_password_rolls_the_tracking_server(rendered: dict[str, RenderResult]) -> None:
    def checksum(result: RenderResult) -> str:
        return manifest(result, "Deployment", "mlflow")["spec"]["template"]["metadata"]["annotations"][
            CHECKSUM_ANNOTATION]

    again = render_stack("ci", secrets={"trackingAdminPassword": ADMIN_PASSWORD})
    rotated = render_stack("ci", secrets={"trackingAdminPassword": "another-admin-password-2"})
    assert checksum(again) == checksum(rendered["ci"]) != checksum(rotated)
    assert ADMIN_PASSWORD not in json.dumps(manifest(rotated, "Deployment", "mlflow"))
    tracking = rotated.one("kubernetes:apps/v1:Deployment", "tracking")
    assert "spec" not in tracking.secret_inputs  # the digest is salted and unsecret: previews still show the spec


# --- the database password ---------------------------------------------------------------------

def test_a_hostile_database_password_survives_the_dsn_and_configparser(tmp_path: Path) -> None:
    result = render_stack("local", secrets={"trackingAdminPassword": ADMIN_PASSWORD,
                                            "databasePassword": HOSTILE_PASSWORD})
    secret = manifest(result, "Secret", "mlflow-server")["stringData"]
    dsn = secret["backend-store-uri"]
    assert make_url(dsn).password == HOSTILE_PASSWORD and make_url(dsn).host.startswith("postgres.")
    path = tmp_path / "basic_auth.ini"
    path.write_text(secret["basic_auth.ini"])
    parser = configparser.ConfigParser()  # what mlflow.server.auth.config.read_auth_config does
    parser.read(path)
    assert parser["mlflow"]["database_uri"] == dsn
    # Without the escaping, configparser refuses the percent-encoded password.
    path.write_text(secret["basic_auth.ini"].replace("%%", "%"))
    unescaped = configparser.ConfigParser()
    unescaped.read(path)
    with pytest.raises(configparser.InterpolationSyntaxError):
        unescaped["mlflow"]["database_uri"]


@pytest.mark.parametrize("password", ["plain", "p%40ss", "a@b/c", "%%", "x:y@z/%"])
def test_dsn_password_round_trips(password: str) -> None:
    dsn = f"postgresql+psycopg2://mlflow:{dsn_password(password)}@db:5432/mlflow"
    assert make_url(dsn).password == password
    parser = configparser.ConfigParser()
    parser.read_string(auth_config("admin", dsn))
    assert parser["mlflow"]["database_uri"] == dsn


# --- the retraining admission policy -----------------------------------------------------------

def _join(items: Any, separator: Any = celtypes.StringType("")) -> celtypes.StringType:
    return celtypes.StringType(str(separator).join(str(i) for i in items))


def _split(text: Any, separator: Any) -> celtypes.ListType:
    return celtypes.ListType([celtypes.StringType(s) for s in str(text).split(str(separator))])


def evaluate(expression: str, activation: dict[str, Any]) -> bool:
    env = celpy.Environment()
    program = env.program(env.compile(expression), functions={"join": _join, "split": _split})
    return bool(program.evaluate(activation))


def admitted(policy: dict[str, Any], params: dict[str, str], job: dict[str, Any]) -> list[str]:
    """The messages of the failed validations (empty: admitted), as the API server evaluates them."""
    activation: dict[str, Any] = {"object": celpy.json_to_cel(job), "params": celpy.json_to_cel({"data": params})}
    variables: dict[str, Any] = {}
    for variable in policy["variables"]:  # in order: each may use the ones before it
        env = celpy.Environment()
        program = env.program(env.compile(variable["expression"]), functions={"join": _join, "split": _split})
        variables[variable["name"]] = program.evaluate({**activation, "variables": _cel_map(variables)})
    activation["variables"] = _cel_map(variables)
    return [v["message"] for v in policy["validations"] if not evaluate(v["expression"], activation)]


def _cel_map(values: dict[str, Any]) -> celtypes.MapType:
    return celtypes.MapType({celtypes.StringType(k): v for k, v in values.items()})


def _defaulted(job: dict[str, Any]) -> dict[str, Any]:
    """What admission sees after the API server's defaulting (fields the policy must ignore)."""
    job = copy.deepcopy(job)
    pod = job["spec"]["template"]["spec"]
    pod.update({"dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler", "terminationGracePeriodSeconds": 30})
    for c in pod["containers"]:
        c.update({"terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"})
    return job


def _tampered(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One Job per rule a compromised monitor could try to break."""
    def edit(change: Any) -> dict[str, Any]:
        copied = copy.deepcopy(job)
        change(copied["spec"]["template"]["spec"], copied["spec"]["template"]["spec"]["containers"][0])
        return copied

    return {
        "secret volume": edit(lambda p, c: p["volumes"].append({"name": "s", "secret": {"secretName": "mlflow-server"}})),
        "hostPath volume": edit(lambda p, c: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}})),
        "projected secret": edit(lambda p, c: p["volumes"].append(
            {"name": "p", "projected": {"sources": [{"secret": {"name": "minio-credentials"}}]}})),
        "other account": edit(lambda p, c: p.update(serviceAccountName="monitoring")),
        "api token": edit(lambda p, c: p.update(automountServiceAccountToken=True)),
        "other image": edit(lambda p, c: c.update(image="attacker/image:1")),
        "other command": edit(lambda p, c: c.update(command=["sh", "-c", "env"])),
        "extra argument": edit(lambda p, c: c["args"].append("--help")),
        "smuggled newline": edit(lambda p, c: c.update(args=["\n".join(c["args"])])),
        "data elsewhere": edit(lambda p, c: c["args"].__setitem__(-2, "s3://elsewhere/monitoring/churn/retrain/x.parquet")),
        "admin secret env": edit(lambda p, c: c["env"].append(
            {"name": "X", "valueFrom": {"secretKeyRef": {"name": "mlflow-server", "key": "admin-password"}}})),
        "root secret envFrom": edit(lambda p, c: c["envFrom"].append({"secretRef": {"name": "minio-credentials"}})),
        "init container": edit(lambda p, c: p.update(initContainers=[dict(c, name="i")])),
    }


# Which rule refuses each tampered Job (a fragment of its validation message).
REFUSED_BY = {"secret volume": "emptyDir", "hostPath volume": "emptyDir", "projected secret": "emptyDir",
              "other account": "training service account", "api token": "without an API token",
              "other image": "mlops train", "other command": "mlops train", "extra argument": "arguments",
              "smuggled newline": "arguments", "data elsewhere": "arguments", "admin secret env": "credentials' Secrets",
              "root secret envFrom": "credentials' Secrets", "init container": "init or ephemeral"}


@pytest.mark.parametrize("stack", ["local", "dev", "ci"])
def test_the_policy_admits_only_the_training_templates(rendered: dict[str, RenderResult], stack: str) -> None:
    result = rendered[stack]
    policy = retrain_admission.policy_spec()
    params = manifest(result, "ConfigMap", retrain_admission.PARAMS)["data"]
    jobs = monitor_created_jobs(result)
    assert jobs
    for job in jobs:
        assert admitted(policy, params, _defaulted(job)) == []
        plain = copy.deepcopy(job)  # a Job without the monitor's data is a template too (kubectl create job --from)
        plain["spec"]["template"]["spec"]["containers"][0]["args"] = plain["spec"]["template"]["spec"]["containers"][0][
            "args"][:-3]
        assert admitted(policy, params, plain) == []
        for rule, bad in _tampered(job).items():
            refused = admitted(policy, params, _defaulted(bad))
            assert len(refused) == 1 and REFUSED_BY[rule] in refused[0], f"{stack}: a Job with {rule}: {refused}"


def test_the_policy_matches_the_monitor_only_and_is_bound_per_namespace(rendered: dict[str, RenderResult]) -> None:
    (condition,) = retrain_admission.policy_spec()["matchConditions"]
    request = {"namespace": "mlops-dev", "userInfo": {"username": "system:serviceaccount:mlops-dev:monitoring"}}
    assert evaluate(condition["expression"], {"request": celpy.json_to_cel(request)})
    for user in ("system:serviceaccount:mlops-ci-1:monitoring", "system:serviceaccount:mlops-dev:training", "alice"):
        request["userInfo"] = {"username": user}
        assert not evaluate(condition["expression"], {"request": celpy.json_to_cel(request)})
    owners = {s for s in ALL_STACKS if s != "ci"}  # ci shares dev's cluster: dev's policy covers it
    for stack in ALL_STACKS:
        result = rendered[stack]
        policies = [p for p in manifests(result, "ValidatingAdmissionPolicy") if p["metadata"]["name"].endswith(
            "-retrain-jobs")]
        assert len(policies) == (stack in owners), stack
        assert [m for m in manifests(result, "ConfigMap") if m["metadata"]["name"] == retrain_admission.PARAMS]
        if policies:
            binding = manifest(result, "ValidatingAdmissionPolicyBinding", policies[0]["metadata"]["name"])["spec"]
            assert binding["validationActions"] == ["Deny"]
            assert binding["paramRef"] == {"name": retrain_admission.PARAMS, "parameterNotFoundAction": "Deny"}
            assert policies[0]["spec"]["failurePolicy"] == "Fail"


# --- MinIO users (cloud: none) -----------------------------------------------------------------

def test_minio_users_get_the_iam_roles_documents(rendered: dict[str, RenderResult]) -> None:
    result = rendered["local"]
    documents = {k.removesuffix(".json"): json.loads(v)
                 for k, v in manifest(result, "ConfigMap", "minio-policies")["data"].items()}
    arn = {role: f"arn:aws:s3:::{result.outputs[f'{role}_bucket']}" for role in ("data", "artifact", "capture")}
    labels = [f"s3://{result.outputs['capture_bucket']}/labels/churn/"]
    assert documents["serving"] == json.loads(serving_policy(arn["capture"], None))
    assert documents["training"] == json.loads(training_policy(arn["data"], arn["capture"], None))
    assert documents["monitoring"] == json.loads(monitoring_policy(arn["capture"], arn["data"], None, labels, None))
    assert documents["tracking"]["Statement"][1]["Resource"] == [f"{arn['artifact']}/mlflow/*"]
    assert documents["backup"] == json.loads(backup_policy(arn["artifact"]))
    actions = {a for d in documents.values() for s in d["Statement"] for a in s["Action"]}
    assert actions and all(a.startswith("s3:") for a in actions)  # MinIO has no KMS or SNS


FAKE_MC = """#!/bin/sh
echo "$*" >> "$MC_LOG"
case "$*" in *"policy attach"*) if grep -qx "attached $7 $9" "$MC_STATE" 2>/dev/null; then
  echo "mc: <ERROR> Unable to make user/group policy association. The specified policy change is already in effect." >&2
  exit 1; fi; echo "attached $7 $9" >> "$MC_STATE";; esac
case "$*" in *"$MC_FAIL"*) echo "mc: <ERROR> $MC_FAIL refused" >&2; exit 1;; esac
exit 0
"""


def run_setup(result: RenderResult, tmp_path: Path, fail: str = "never-matches") -> subprocess.CompletedProcess[str]:
    job = manifest(result, "Job", "storage-create-buckets")
    container = pod_spec(job)["containers"][0]
    (tmp_path / "bin").mkdir(exist_ok=True)
    (tmp_path / "bin" / "mc").write_text(FAKE_MC)
    (tmp_path / "bin" / "mc").chmod(0o755)
    secrets = {m["metadata"]["name"]: m["stringData"] for m in manifests(result, "Secret")}
    (tmp_path / "policies").mkdir(exist_ok=True)  # the ConfigMap volume
    for key, text in manifest(result, "ConfigMap", "minio-policies")["data"].items():
        (tmp_path / "policies" / key).write_text(text)
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "MC_LOG": str(tmp_path / "log"), "MC_FAIL": fail,
           "MC_STATE": str(tmp_path / "state"), **secrets[MINIO_ROOT]}
    for e in container["env"]:
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        env[e["name"]] = secrets[ref["name"]][ref["key"]] if ref else e["value"]
    script = container["command"][-1].replace(POLICY_MOUNT, str(tmp_path / "policies"))
    return subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=30, check=False)


def test_the_minio_setup_job_creates_scoped_users_idempotently(rendered: dict[str, RenderResult],
                                                                tmp_path: Path) -> None:
    result = rendered["local"]
    for _attempt in (1, 2):  # a re-run (a replaced Job) finds the attachments in effect: still fine
        done = run_setup(result, tmp_path)
        assert done.returncode == 0, done.stderr
    calls = (tmp_path / "log").read_text().splitlines()
    root = manifest(result, "Secret", MINIO_ROOT)["stringData"]
    assert calls[0].endswith(f"alias set store {result.outputs['s3_endpoint']} {root['MINIO_ROOT_USER']} "
                             f"{root['MINIO_ROOT_PASSWORD']}")
    for account in S3_ACCOUNTS:
        user = manifest(result, "Secret", f"minio-user-{account}")["stringData"]
        assert f"--config-dir /tmp/mc admin user add store {user['AWS_ACCESS_KEY_ID']} " \
               f"{user['AWS_SECRET_ACCESS_KEY']}" in calls
        assert f"--config-dir /tmp/mc admin policy create store mlops-{account} {tmp_path}/policies/{account}.json" \
               in calls
        assert any(c.endswith(f"policy attach store mlops-{account} --user {user['AWS_ACCESS_KEY_ID']}") for c in calls)
        assert env_name(account, "KEY") in json.dumps(pod_spec(manifest(result, "Job", "storage-create-buckets")))
    failed = run_setup(result, tmp_path, fail="user add store mlops-training")
    assert failed.returncode != 0 and "refused" in failed.stderr  # any other error stops the Job


def test_the_setup_job_reruns_when_a_password_or_a_policy_changes(rendered: dict[str, RenderResult]) -> None:
    def digest(result: RenderResult) -> str:
        return manifest(result, "Job", "storage-create-buckets")["spec"]["template"]["metadata"]["annotations"][
            "mlops-platform/users-checksum"]

    first = rendered["local"]
    config = load_stack_config(stack_file("local"))
    config["mlops-platform:serving"]["endpoints"][0]["monitorLabels"] = "s3://other-labels/labels/churn/"
    relabelled = render_stack("local", config=config, secrets={"trackingAdminPassword": ADMIN_PASSWORD})
    assert digest(relabelled) != digest(first)  # the monitoring policy changed: the Job runs again
    expected = hashlib.sha256("\n".join([manifest(first, "Secret", MINIO_ROOT)["stringData"]["MINIO_ROOT_PASSWORD"],
                                         *[manifest(first, "Secret", f"minio-user-{a}")["stringData"][
                                             "AWS_SECRET_ACCESS_KEY"] for a in S3_ACCOUNTS],
                                         json.dumps({k.removesuffix(".json"): v for k, v in manifest(
                                             first, "ConfigMap", "minio-policies")["data"].items()},
                                             sort_keys=True)]).encode()).hexdigest()
    assert digest(first) == expected  # every password is covered (salted with the root one)


# --- the README's table is what is rendered -----------------------------------------------------

README = Path(__file__).resolve().parents[2] / "README.md"
# How the table names a rendered pod (the placeholders `<job>`, `<endpoint>` stand for `churn`).
TABLE_NAMES = {"train-churn": "train-<job>", "serve-churn": "serve-<endpoint>", "monitor-churn": "monitor-<endpoint>",
               "train-churn-retrain-": "retraining Jobs", "tracking-backup": "backup", "tracking-restore": "restore"}


def credential_rows() -> dict[str, str]:
    """Secret name (placeholders resolved for the local stack) -> the row's "held by" cell."""
    text = README.read_text().split("### Credentials and who can reach what", 1)[1].split("**Rotating", 1)[0]
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `"):
            secret, held_by = line.split("|")[1:3]
            name = secret.split("`")[1].replace("<job>", "churn").replace("<endpoint>", "churn")
            for account in ("serving", "training", "monitoring", "tracking") if "<account>" in name else ("",):
                rows[name.replace("<role>-<name>", "").replace("<account>", account)] = held_by
    return rows


def test_the_readme_table_names_every_secret_and_who_reads_it(rendered: dict[str, RenderResult]) -> None:
    rows = credential_rows()
    result = rendered["local"]
    readers: dict[str, set[tuple[str, str]]] = {}
    for name, pod in every_pod(result):
        for secret in secret_references(pod):
            readers.setdefault(secret, set()).add((name, pod.get("serviceAccountName", "")))
    assert set(readers) - set(rows) == set(), "a Secret pods read is missing from the README table"
    for secret, pods in readers.items():
        for name, account in pods:
            assert TABLE_NAMES.get(name, name) in rows[secret] or account in rows[secret], (secret, name)
    monitors = [m for m in manifests(rendered["dev"], "ServiceMonitor") if m["metadata"]["name"] == "mlops-tracking"]
    assert monitors[0]["spec"]["endpoints"][0]["basicAuth"]["password"]["name"] in rows
    assert "Prometheus" in rows["tracking-credentials"]


def test_an_rds_stack_refuses_what_rds_refuses_in_a_password() -> None:
    """`%` and `:` are fine everywhere (the DSN encodes them); `/`, `@`, quotes and spaces only in-cluster."""
    secrets = {"trackingAdminPassword": ADMIN_PASSWORD}
    with pytest.raises(ConfigError, match=r"^mlops-platform:databasePassword: contains '/', '@'; an RDS master"):
        render_stack("dev", secrets={**secrets, "databasePassword": "abc@def/ghi"})
    dsn = manifest(render_stack("dev", secrets={**secrets, "databasePassword": "abc%def:ghi"}), "Secret",
                   "mlflow-server")["stringData"]["backend-store-uri"]
    assert make_url(dsn).password == "abc%def:ghi"
    render_stack("ci", secrets={**secrets, "databasePassword": HOSTILE_PASSWORD})  # in-cluster Postgres: fine
