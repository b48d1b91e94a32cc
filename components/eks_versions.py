"""Which Kubernetes versions an EKS cluster of ours may run, from AWS's dated support calendar.

EKS gives a version 14 months of standard support, then 12 of extended support (at six times the
control-plane price), then upgrades the cluster by force. Our clusters use the STANDARD upgrade
policy (components/cluster.py): a version past its end of standard support is refused by the
config, naming the version and the date, so a stack is upgraded on purpose and not by AWS.

The table is dated: when AWS publishes a new version or dates, add its row here (and the matching
cluster-autoscaler release; the autoscaler's minor must equal the cluster's).
Source: the Amazon EKS Kubernetes release calendar, as of TABLE_AS_OF.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

TABLE_AS_OF = date(2026, 12, 3)


@dataclass(frozen=True)
class EksVersion:
    version: str
    end_of_standard_support: date
    end_of_extended_support: date
    # The cluster-autoscaler image (its minor tracks Kubernetes') and the kubernetes/autoscaler chart
    # whose appVersion matches; None where we have not verified a release (rows kept for their dates).
    autoscaler_tag: str | None
    autoscaler_chart: str | None


SUPPORT_TABLE: dict[str, EksVersion] = {v.version: v for v in (
    EksVersion("1.29", date(2025, 3, 23), date(2026, 3, 23), None, None),
    EksVersion("1.30", date(2025, 7, 23), date(2026, 7, 23), None, None),
    EksVersion("1.31", date(2025, 11, 26), date(2026, 11, 26), "v1.31.0", "9.43.2"),
    EksVersion("1.32", date(2026, 3, 23), date(2027, 3, 23), None, None),
    EksVersion("1.33", date(2026, 7, 29), date(2027, 7, 29), None, None),
    EksVersion("1.34", date(2026, 12, 2), date(2027, 12, 2), None, None),
    EksVersion("1.35", date(2027, 3, 27), date(2028, 3, 27), "v1.35.0", "9.54.0"),
)}
DEFAULT_VERSION = "1.35"  # in standard support on TABLE_AS_OF


def support_problem(version: str, today: date) -> str | None:
    """Why `version` may not be used on `today` (None when it may): one sentence for the config error."""
    row = SUPPORT_TABLE.get(version)
    if row is None:
        return (f"has no support dates in components/eks_versions.py; use one of {sorted(SUPPORT_TABLE)} "
                "that is in standard support, or add its row from AWS's EKS release calendar")
    if today > row.end_of_standard_support:
        current = in_standard_support(today)
        hint = f"use {current[0]} (standard support until {SUPPORT_TABLE[current[0]].end_of_standard_support})" \
            if current else "add a newer version's row from AWS's EKS release calendar"
        return f"left EKS standard support on {row.end_of_standard_support.isoformat()}; {hint}"
    if row.autoscaler_tag is None:
        return "has no cluster-autoscaler release recorded in components/eks_versions.py; add its tag and chart"
    return None


def in_standard_support(today: date) -> list[str]:
    """Versions in standard support on `today`, newest first."""
    found = [v for v, row in SUPPORT_TABLE.items() if today <= row.end_of_standard_support]
    return sorted(found, key=lambda v: tuple(int(p) for p in v.split(".")), reverse=True)


def autoscaler_release(version: str) -> tuple[str, str]:
    """(image tag, chart version) of the cluster-autoscaler for `version`."""
    row = SUPPORT_TABLE[version]
    if row.autoscaler_tag is None or row.autoscaler_chart is None:
        raise ValueError(f"no cluster-autoscaler release recorded for Kubernetes {version} in components/eks_versions.py")
    return row.autoscaler_tag, row.autoscaler_chart
