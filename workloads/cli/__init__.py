"""The `mlops` command line: one module per command group, each a screenful that delegates.

Commands import their implementation lazily, so `mlops plan` does not pay for importing
mlflow and scikit-learn, and `mlops train` does not pay for pulumi_aws. Workload commands
(`train`, `serve`, `monitor`, `data generate`) take their options from the settings contract
(workloads/settings.py); every command shares one error handler (workloads/cli/options.py).
"""

from __future__ import annotations

from workloads.cli import data, env, local, model, monitor, plan, promote, quickstart, recreate, serve, train  # noqa: F401
from workloads.cli.app import app

__all__ = ["app"]
