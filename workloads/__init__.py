"""Workloads that run on an mlops-platform environment: data, training, serving, monitoring."""

import os

# mlflow 3.x phones home from a background thread on import; a platform for private
# clusters must not. Set before anything imports mlflow.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
