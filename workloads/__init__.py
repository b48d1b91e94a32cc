"""Workloads that run on an mlops-platform environment: data, training, serving, monitoring."""

import os

# mlflow 3.x phones home from a background thread on import; a platform for private
# clusters must not. Set before anything imports mlflow.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

# mlflow's client retries a dead server 7 times with backoff factor 2: minutes per call before
# a job fails. Fail within ~30 s instead (still rides out a tracking-server restart); overridable.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")

# mlflow prints a link to every run it ends on stdout, which would corrupt `--json` output.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
