"""One error base for everything a workload refuses or cannot finish, with the CLI's exit code.

The CLI has a single handler (workloads/cli/__init__.py): an `MlopsError` prints one line
(`<kind>: <message>`, no traceback) and exits with `exit_code`. Exit codes:
2 bad input (spec, options, environment), 3 data or data-integrity validation failed,
1 the work could not finish (a server went away, shards missing, retraining failed).
"""

from __future__ import annotations


class MlopsError(Exception):
    """Base: a clear, one-line reason and the exit code the CLI ends with."""

    exit_code = 1
    kind = "failed"

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(MlopsError):
    """Bad options, spec or settings: nothing was done."""

    exit_code = 2
    kind = "invalid"


class EnvironmentNotFound(UsageError):
    """The environment's outputs could not be found or are incomplete."""

    kind = "no environment"


class ConfigInvalid(UsageError):
    """A stack file that cannot describe a valid environment."""

    kind = "invalid configuration"


class ValidationFailed(MlopsError):
    """Data did not pass its schema: nothing was registered."""

    exit_code = 3
    kind = "data validation failed"


class ServiceUnavailable(MlopsError):
    """A server the workload needs (tracking, S3, Kubernetes API) failed mid-run."""

    exit_code = 1
    kind = "service unavailable"
