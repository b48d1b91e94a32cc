"""Where everything lives in the environment's buckets: the S3 key layout, written once.

Workloads build keys with these functions; `components/` builds IAM statements from the
prefixes below (so a role's `Resource` and the keys a workload writes cannot drift apart);
tests use both.

    s3://<data_bucket>/
        incoming/<name>.parquet                          what users and CI drop for training
        datasets/<name>/schema.json                      the dataset's schema (first version)
        datasets/<name>/<digest>/data.parquet            each dataset version, stored once
    s3://<capture_bucket>/
        captures/<endpoint>/dt=YYYY-MM-DD/hour=HH/<uuid>.parquet   inference capture
        labels/<endpoint>/...                            ground truth, written by a labeling process
        monitoring/<endpoint>/retrain.lock               the retraining lock (conditional put)
        monitoring/<endpoint>/last_retrain.json          the cooldown record
        monitoring/<endpoint>/retrain/<run_id>.parquet   newest data handed to a retraining Job
        monitoring/<endpoint>/rollups/dt=YYYY-MM-DD/hour=HH/<bins>.summary   an hour's capture summaries merged
        monitoring/profiles/<dataset digest>/<features hash>.npz   cached reference profiles
        monitoring/profile-bins/<dataset digest>/<features hash>.json   their PSI bins (capture reads these)
    s3://<artifact_bucket>/
        mlflow/...                                       MLflow's artifact root (the tracking
                                                         server writes it; clients go through it)
        backups/tracking/<YYYYmmddTHHMMSSZ>.dump.enc     encrypted pg_dump of the tracking database
                                                         (cloud: none; components/backup.py)
"""

from __future__ import annotations

from datetime import datetime

# Top-level prefixes, per bucket. IAM statements in components/ use these (with a trailing `*`).
INCOMING = "incoming/"
DATASETS = "datasets/"
CAPTURES = "captures/"
LABELS = "labels/"
MONITORING = "monitoring/"
PROFILE_BINS = f"{MONITORING}profile-bins/"  # the one monitoring/ prefix serving may read
BACKUPS = "backups/"  # artifact bucket, outside MLflow's artifact root
MLFLOW_ARTIFACTS = "mlflow/"  # artifact bucket: the tracking server's --artifacts-destination


# --- data bucket -----------------------------------------------------------------------------


def incoming_key(name: str, suffix: str = "parquet") -> str:
    return f"{INCOMING}{name}.{suffix}"


def dataset_prefix(name: str) -> str:
    return f"{DATASETS}{name}/"


def dataset_schema_key(name: str) -> str:
    return f"{dataset_prefix(name)}schema.json"


def dataset_version_key(name: str, digest: str) -> str:
    return f"{dataset_prefix(name)}{digest}/data.parquet"


# --- capture bucket --------------------------------------------------------------------------


def capture_prefix(endpoint: str) -> str:
    return f"{CAPTURES}{endpoint}/"


def capture_key(endpoint: str, hour: datetime, name: str) -> str:
    """One Parquet file of captured records, partitioned by hour (what the monitor's window reads)."""
    return f"{capture_prefix(endpoint)}dt={hour:%Y-%m-%d}/hour={hour:%H}/{name}.parquet"


def labels_prefix(endpoint: str) -> str:
    return f"{LABELS}{endpoint}/"


def monitoring_prefix(endpoint: str) -> str:
    return f"{MONITORING}{endpoint}/"


def retrain_lock_key(endpoint: str) -> str:
    return f"{monitoring_prefix(endpoint)}retrain.lock"


def last_retrain_key(endpoint: str) -> str:
    return f"{monitoring_prefix(endpoint)}last_retrain.json"


def retrain_data_key(endpoint: str, run_id: str) -> str:
    return f"{monitoring_prefix(endpoint)}retrain/{run_id}.parquet"


def rollup_key(endpoint: str, hour: datetime, name: str) -> str:
    """One hour's capture summaries merged by the monitor (workloads/monitoring/rollups.py)."""
    return f"{rollups_prefix(endpoint, hour)}hour={hour:%H}/{name}.summary"


def rollups_prefix(endpoint: str, day: datetime) -> str:
    return f"{monitoring_prefix(endpoint)}rollups/dt={day:%Y-%m-%d}/"


def profile_key(dataset_digest: str, features_hash: str) -> str:
    return f"{MONITORING}profiles/{dataset_digest}/{features_hash}.npz"


def profile_bins_key(dataset_digest: str, features_hash: str) -> str:
    """The bins of the profile at `profile_key(...)`: what capture summarises each flush on."""
    return f"{PROFILE_BINS}{dataset_digest}/{features_hash}.json"


# --- artifact bucket -------------------------------------------------------------------------


def tracking_backup_prefix() -> str:
    """Where the backup CronJob puts each encrypted dump: `<prefix><UTC stamp>.dump.enc`."""
    return f"{BACKUPS}tracking/"


def monitoring_experiment(endpoint: str) -> str:
    """The MLflow experiment of an endpoint's monitoring runs (not an S3 key, but named the same way)."""
    return f"{MONITORING}{endpoint}"
