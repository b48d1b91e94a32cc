"""The tracking server's users: one per workload, each with the narrowest MLflow permission that works.

The plan (`plan(env)`), measured against a real `mlflow server --app-name basic-auth`
(tests/contract/test_mlflow_permissions.py):

| user | grants | why |
|---|---|---|
| `mlops-training-<job>` | EDIT its experiment, EDIT its model | log runs, register versions, move the alias |
| `mlops-serving-<endpoint>` | READ its model, READ the experiments its model is trained in | resolve the alias; a model's files live under the training experiment, and reading them is judged on that experiment |
| `mlops-monitoring-<endpoint>` | READ its model and those experiments, EDIT `monitoring/<endpoint>` | load the champion and its training spec, record monitoring runs |
| `mlops-metrics-scraper` | none | the ServiceMonitor's basic auth for the server's /metrics: authenticated, sees nothing |

An endpoint whose model no training job of the stack registers gets READ on the model only: its
versions' files then sit in an experiment the stack does not know (an admin grants READ on it).

The server runs with `default_permission = NO_PERMISSIONS`: a user sees nothing it was not granted.
MLflow lets any authenticated user create *new* experiments and registered models (it grants their
creator MANAGE on them); the plan's experiments and models are created up front, so no workload can
claim a name another one is granted on.

Who creates them, and why there: an init container of the tracking Deployment (`provision-users`,
after the schema migration, under the same advisory lock), writing to the auth and tracking
databases directly with the admin credential the server already holds. Every server start applies
the plan, before any replica serves, so (1) workloads never meet a server without their users; (2)
a rotated password, workload's or admin's, takes effect with the rollout that the changed
credentials checksum on the pod template causes (MLflow itself ignores MLFLOW_AUTH_ADMIN_PASSWORD
once the admin exists, so the admin password could not be rotated through the API without the old
one); (3) no other pod ever holds the admin credential. Idempotent: users are created or their
password reset only when it no longer matches, grants are reconciled to the plan (revoked when
dropped), and managed users (`mlops-*`) that left the plan are deleted.

A training job's model and experiment are read from its spec at render time: the image copies
workloads/specs to /app/specs (workloads/Dockerfile), so `/app/specs/churn.yaml` is this repository's
workloads/specs/churn.yaml.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi

from components.config import ConfigError, EnvironmentConfig, TrainingJob
from components.credentials import (
    MLFLOW_USER_PREFIX,
    TRACKING_KEYS,
    generated_secret,
    mlflow_secret,
    mlflow_username,
    monitoring,
    serving,
    training,
)
from components.security import container_security_context, resources
from workloads import layout

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SPECS, REPO_SPECS = "/app/specs/", ROOT / "workloads" / "specs"  # workloads/Dockerfile: COPY
IMAGE_WORKDIR = "/app/"
METRICS_USER = mlflow_username("metrics", "scraper")
METRICS_SECRET = "tracking-credentials"  # what the ServiceMonitor's basic auth reads (observability.py)
CONTAINER = "provision-users"
USERS_MOUNT = "/etc/mlflow-users"
USERS_FILE = "users.json"
READ, EDIT = "READ", "EDIT"


@dataclass(frozen=True)
class Grant:
    resource_type: str  # "experiment" (by name; the script resolves its id) or "registered_model"
    name: str
    permission: str


@dataclass(frozen=True)
class PlannedUser:
    username: str
    grants: tuple[Grant, ...]

    @property
    def secret(self) -> str:
        return METRICS_SECRET if self.username == METRICS_USER else mlflow_secret(self.username)


def spec_file(job: TrainingJob, index: int) -> Path:
    """This repository's copy of the spec the image runs (`workloads.training[].spec`)."""
    spec = job.spec if job.spec.startswith("/") else IMAGE_WORKDIR + job.spec
    path = REPO_SPECS / spec.removeprefix(IMAGE_SPECS)
    if not spec.startswith(IMAGE_SPECS) or not path.is_file():
        raise ConfigError(f"mlops-platform:workloads.training[{index}].spec: {job.spec!r} is not one of the image's "
                          f"specs; use {IMAGE_SPECS}<file> with a file from workloads/specs (its model and "
                          "experiment name the training user's MLflow grants)")
    return path


def model_and_experiment(job: TrainingJob, index: int) -> tuple[str, str]:
    from workloads.training.spec import TrainingSpec  # the one definition of a spec's names

    spec = TrainingSpec.from_yaml(spec_file(job, index))
    return spec.name, spec.experiment_name


def plan(env: EnvironmentConfig) -> list[PlannedUser]:
    """Every workload's user and grants (see the module doc), in a stable order."""
    trained = [model_and_experiment(job, i) for i, job in enumerate(env.workloads.training)]
    users = [PlannedUser(training(job.name).tracking_user,
                         (Grant("experiment", experiment, EDIT), Grant("registered_model", model, EDIT)))
             for job, (model, experiment) in zip(env.workloads.training, trained, strict=True)]
    for endpoint in env.serving.endpoints:
        reads = [Grant("registered_model", endpoint.model, READ),
                 *[Grant("experiment", e, READ) for e in sorted({e for m, e in trained if m == endpoint.model})]]
        users.append(PlannedUser(serving(endpoint.name).tracking_user, tuple(reads)))
        users.append(PlannedUser(monitoring(endpoint.name).tracking_user,
                                 (*reads, Grant("experiment", layout.monitoring_experiment(endpoint.name), EDIT))))
    users.append(PlannedUser(METRICS_USER, ()))
    return users


def users_document(users: list[PlannedUser], passwords: list[str]) -> str:
    """users.json for the init container: each user's password and grants (a Secret: it holds passwords)."""
    return json.dumps({"users": [
        {"username": u.username, "password": p,
         "grants": [{"type": g.resource_type, "name": g.name, "permission": g.permission} for g in u.grants]}
        for u, p in zip(users, passwords, strict=True)]}, indent=1)


@dataclass(frozen=True)
class UserSecrets:
    document: pulumi.Output[str]  # users.json (with passwords): what the init container applies
    ready: pulumi.Output[str]  # resolves once every user's Secret exists


def user_secrets(parent: pulumi.Resource, name: str, namespace: pulumi.Input[str], users: list[PlannedUser],
                 labels: dict[str, str]) -> UserSecrets:
    """A generated password per user and its Secret (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)."""
    made = [generated_secret(parent, f"{name}-{user.username}", user.secret, namespace, TRACKING_KEYS, user.username,
                             {**labels, "mlops-platform/mlflow-user": user.username}) for user in users]
    passwords, names = [m.password for m in made], [m.secret.metadata["name"] for m in made]
    document: pulumi.Output[str] = pulumi.Output.all(*passwords).apply(lambda p: users_document(users, list(p)))
    return UserSecrets(document, pulumi.Output.all(*names).apply(lambda _: METRICS_SECRET))


def credentials_checksum(*values: str) -> str:
    """Changes whenever a credential the init container applies changes (the pod template rolls). Salted with
    the first value (the Flask secret key, 64 random characters): the digest says nothing about the passwords."""
    return hashlib.sha256("\n".join(values).encode()).hexdigest()


SCRIPT = """\
import json, os
import sqlalchemy
from sqlalchemy.pool import NullPool
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.server.auth.config import read_auth_config
from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore as AuthStore
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
from mlflow.store.tracking import DEFAULT_ARTIFACTS_URI
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore
config = read_auth_config()  # the server's own read of basic_auth.ini (and MLFLOW_AUTH_ADMIN_*)
plan = json.loads(open(os.environ["MLOPS_MLFLOW_USERS"]).read())["users"]
PREFIX, TYPES = "%(prefix)s", ("experiment", "registered_model")

def missing(error):
    return error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)

def set_password(auth, name, password, admin):
    if not auth.has_user(name, use_primary=True):
        auth.create_user(name, password, is_admin=admin)
        return "created"
    changed = not auth.authenticate_user(name, password, use_primary=True)
    if changed or auth.get_user(name).is_admin != admin:
        auth.update_user(name, password=password if changed else None, is_admin=admin)
    return "password reset" if changed else "unchanged"

def resource_id(tracking, registry, grant):
    if grant["type"] == "registered_model":  # created up front: nobody else can claim the name
        try:
            registry.get_registered_model(grant["name"])
        except MlflowException as error:
            if not missing(error):
                raise
            registry.create_registered_model(grant["name"])
        return grant["name"]
    found = tracking.get_experiment_by_name(grant["name"])
    if found is None:
        return tracking.create_experiment(grant["name"])
    if found.lifecycle_stage == "deleted":
        tracking.restore_experiment(found.experiment_id)
    return found.experiment_id

def reconcile(auth, user, wanted):
    role_grants = auth.list_grants(auth.get_user(user).id, auth._get_active_workspace_name(), TYPES)
    have = {(g.resource_type, g.resource_pattern): g.permission for g in role_grants if g.resource_type in TYPES}
    for key, permission in have.items():
        if wanted.get(key) != permission:
            try:
                auth.revoke_user_resource_permission(user, *key)
            except MlflowException as error:  # granted through a role an admin assigned: theirs to keep
                if not missing(error):
                    raise
    for key, permission in wanted.items():
        if have.get(key) != permission:
            auth.grant_user_resource_permission(user, *key, permission)

def provision():
    auth = AuthStore()
    auth.init_db(config.database_uri)
    tracking = TrackingStore(config.database_uri, DEFAULT_ARTIFACTS_URI)  # what `--serve-artifacts` uses
    registry = RegistryStore(config.database_uri)
    print(f"admin {config.admin_username}: {set_password(auth, config.admin_username, config.admin_password, True)}")
    for user in plan:
        state = set_password(auth, user["username"], user["password"], False)
        reconcile(auth, user["username"], {(g["type"], resource_id(tracking, registry, g)): g["permission"]
                                           for g in user["grants"]})
        print(f"user {user['username']}: {state}, {len(user['grants'])} grants", flush=True)
    planned = {u["username"] for u in plan} | {config.admin_username}
    for stale in [u.username for u in auth.list_users() if u.username.startswith(PREFIX)]:
        if stale not in planned:
            auth.delete_user(stale)
            print(f"user {stale}: deleted (no longer planned)", flush=True)

engine = sqlalchemy.create_engine(config.database_uri, poolclass=NullPool)
with engine.connect() as lock:  # replicas starting together take turns (the migration's lock)
    lock.execute(sqlalchemy.text("SELECT pg_advisory_lock(%(lock)d)"))
    lock.commit()
    try:
        provision()
    finally:
        lock.execute(sqlalchemy.text("SELECT pg_advisory_unlock(%(lock)d)"))
        lock.commit()
"""


def provision_container(image: str, server_secret: Any, admin_username: str, users_volume: str,
                        auth_config_path: str, lock_key: int, telemetry_off: list[dict[str, Any]]) -> dict[str, Any]:
    """The init container: the server's image, its auth config and admin credential, the users file."""
    return {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "-c", SCRIPT % {"prefix": MLFLOW_USER_PREFIX, "lock": lock_key}],
        "env": [
            *telemetry_off,
            {"name": "MLFLOW_AUTH_CONFIG_PATH", "value": auth_config_path},
            {"name": "MLFLOW_AUTH_ADMIN_USERNAME", "value": admin_username},
            {"name": "MLFLOW_AUTH_ADMIN_PASSWORD",
             "valueFrom": {"secretKeyRef": {"name": server_secret, "key": "admin-password"}}},
            {"name": "MLOPS_MLFLOW_USERS", "value": f"{USERS_MOUNT}/{USERS_FILE}"},
            {"name": "HOME", "value": "/tmp"},
        ],
        "resources": resources("250m", "512Mi"),
        "securityContext": container_security_context(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                         {"name": "auth-config", "mountPath": str(Path(auth_config_path).parent), "readOnly": True},
                         {"name": users_volume, "mountPath": USERS_MOUNT, "readOnly": True}],
    }
