"""Config of the tracking database's backups: `tracking.database.backup` and `restoreFromSnapshot`.

Its own module (config.py composes it into `DatabaseConfig`) so what a backup is sits in one place:
- RDS (every AWS environment but ci): automated backups (`backupRetentionDays`) and a final
  snapshot at teardown; `restoreFromSnapshot` creates the instance from a snapshot instead;
- the in-cluster Postgres of `cloud: none`: a CronJob (components/backup.py) on `schedule` dumps,
  encrypts and uploads to the artifact bucket, and deletes dumps older than `retentionDays`.
The passphrase is the stack secret `backupPassphrase`: stack config survives `pulumi destroy`, so
a recreated environment can still decrypt what the old one wrote.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from components import config_values as cv

# An RDS snapshot: its identifier (manual, or `rds:` automated) or its ARN.
SNAPSHOT_ID = r"^(arn:aws[a-z-]*:rds:[a-z0-9-]+:[0-9]{12}:snapshot:)?(rds:)?[A-Za-z][A-Za-z0-9-]{0,254}$"
PASSPHRASE_KEY = "backupPassphrase"
PASSPHRASE_MIN_LENGTH = 16


class BackupConfig(BaseModel):
    """`tracking.database.backup`: the in-cluster Postgres's backup CronJob (cloud: none only)."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True,
                              allow_inf_nan=False)

    enabled: bool | None = None  # None: on for cloud: none (except kind ci)
    schedule: cv.CronSchedule = "30 2 * * *"
    retention_days: int = Field(default=14, ge=1, le=3650)


def check_backups(*, cloud_none: bool, in_cluster: bool, backup: BackupConfig,
                  restore_from_snapshot: str | None) -> None:
    """Each key only where it does something (raised as one-line config errors)."""
    if restore_from_snapshot is not None and in_cluster:
        raise ValueError(f"tracking.database.restoreFromSnapshot: {restore_from_snapshot!r} applies to RDS only; "
                         "this environment keeps Postgres in the cluster (restore its backups with the "
                         "tracking-restore Job, README \"Backups and recreation\")")
    if backup.model_fields_set and not cloud_none:
        raise ValueError(f"tracking.database.backup: {backup.model_dump(by_alias=True, exclude_unset=True)} "
                         "applies to the in-cluster Postgres of cloud: none only; RDS keeps automated backups "
                         "(tracking.database.backupRetentionDays) and a final snapshot")
