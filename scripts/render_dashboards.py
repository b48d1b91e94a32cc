"""Draw each Grafana dashboard of components/dashboards/ as a PNG of its panels, from synthetic test data.

    .venv/bin/python scripts/render_dashboards.py        # writes docs/observability/<stem>.png

So a reader sees what the dashboards show before installing anything: every panel at its grid
position, with its title, unit, legend (the target's legendFormat filled with example label values)
and series from seeded synthetic data shaped by the panel's unit. The data is made up; the layout,
titles, units and legends are the dashboard's own. Each PNG records the sha256 of the JSON it was
drawn from (PNG text `Source`): tests/infra/test_observability.py fails when a PNG is stale.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import sys
import zlib
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "components" / "dashboards"
OUT = ROOT / "docs" / "observability"
POINTS = 288  # 24 hours at 5-minute steps
EXAMPLES = {
    "mlops_endpoint": ["churn", "spend"], "status": ["200", "400", "503"], "path": ["fast", "mlflow"],
    "version": ["3", "4"], "model": ["churn"], "model_version": ["4"], "metric": ["roc_auc"],
    "feature": ["tenure", "monthly_spend", "plan", "support_calls"],
    "owner_name": ["monitor-churn", "train-churn-select"], "cronjob": ["monitor-churn", "train-churn-select"],
    "job_name": ["monitor-churn-29012345", "train-churn-manual-1"], "label_mlops_platform_pool": ["system", "cpu", "gpu"],
    "namespace": ["mlops-dev", "mlops-ci-1234"], "job": ["serve-churn", "mlflow", "pushgateway"],
}
# Typical magnitude per unit (low, high) of the synthetic series.
SCALE = {"reqps": (20, 120), "rowsps": (200, 1500), "percentunit": (0.2, 0.8), "percent": (20, 90), "s": (0.005, 0.08),
         "bytes": (2e9, 12e9), "short": (1, 10), "none": (1, 1)}


def legends(fmt: str, expr: str = "") -> list[str]:
    """The legendFormat filled with example values: one legend per series (at most 4)."""
    keys = re.findall(r"\{\{\s*(\w+)\s*\}\}", fmt)
    examples = {**EXAMPLES, **next((v for k, v in CONTEXT_EXAMPLES.items() if k in expr), {})}
    combos = itertools.product(*(examples.get(k, [k]) for k in keys))
    out = []
    for combo in itertools.islice(combos, 4):
        text = fmt
        for key, value in zip(keys, combo, strict=True):
            text = re.sub(r"\{\{\s*" + key + r"\s*\}\}", value, text)
        out.append(text or "value")
    return out or ["value"]


# Panels whose values are counts that change in steps, or events that are mostly zero (by title).
COUNTS = ("pods", "nodes per pool", "targets up", "active jobs", "gpus", "drifted features", "failed jobs",
          "succeeded jobs", "outcomes")
EVENT_TITLES = ("errors", "failed")
EVENT_LEGENDS = ("dropped", "failed", "drift", "retraining triggered")  # "drift": a monitoring status
# Label values where a panel's query gives them another meaning than EXAMPLES.
CONTEXT_EXAMPLES = {"mlops_monitoring_status": {"status": ["ok", "drift"]}}


def synthetic(panel: dict[str, Any], ref: str, legend: str, step: bool) -> np.ndarray:
    """A seeded series shaped by the panel's unit and title (a daily cycle, noise, a one-off event)."""
    title = panel["title"].lower()
    rng = np.random.default_rng(zlib.crc32(f"{panel['title']}|{ref}|{legend}".encode()))
    panel_rng = np.random.default_rng(zlib.crc32(panel["title"].encode()))  # quantiles share one level
    unit = panel["fieldConfig"]["defaults"].get("unit", "short")
    low, high = SCALE.get(unit, (1, 10))
    if "5xx" in title:
        low, high = 0.001, 0.01
    elif "drift" in title or "psi" in title or "ks " in title:
        low, high = 0.02, 0.3
    elif unit == "s" and "latency" not in title:
        low, high = (5, 40) if "duration" in title else (300, 3600)
    elif legend in ("400", "503"):  # responses by status: errors are rare
        low, high = (0.5, 3) if legend == "400" else (0.05, 0.3)
    elif "roc_auc" in legend:
        low, high = 0.72, 0.84
    elif legend.endswith("requested"):  # requests sit between use and capacity
        low = 0.6 * high
    t = np.linspace(0, 2 * np.pi, POINTS)
    quantile = {"p50": 1.0, "mean": 1.2, "p95": 1.6, "p99": 2.5}.get(legend)
    level = panel_rng.uniform(low, high) * quantile if quantile else rng.uniform(low, high)
    series = level * (1 + 0.25 * np.sin(t + rng.uniform(0, 6))) + rng.normal(0, 0.05 * level, POINTS)
    if any(word in title for word in COUNTS) or "version served" in title:
        series = np.round(np.clip(series, 1, None) / max(level, 1) * (1 if "version" in title else 2))
    if legend.endswith("allocatable"):  # capacity: flat, above use
        series = np.full(POINTS, 1.3 * high)
    if any(word in title for word in EVENT_TITLES) or legend.endswith(EVENT_LEGENDS) or legend == "ok":
        incident = np.zeros(POINTS)
        incident[POINTS * 2 // 3:][:24] = 1 if "decision" in title else rng.integers(1, 4)  # one incident
        series = 1 - incident if legend == "ok" else incident
    if "version served over time" in title:  # the champion moved from one version to the next
        series = (np.arange(POINTS) >= 190).astype(float)
        series = series if legend.endswith("v4") else 1 - series
    if step:  # values that change once per run (hourly): hold them
        series = np.repeat(series[::12], 12)[:POINTS]
    return np.clip(series, 0, None)


def _fmt(value: float, unit: str) -> str:
    if unit == "percentunit":
        return f"{value:.1%}"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value / 60:.0f} min"
    if unit == "reqps":
        return f"{value:.0f} req/s"
    return f"{value:.3g}"


def _draw(ax: Any, panel: dict[str, Any]) -> None:
    unit = panel["fieldConfig"]["defaults"].get("unit", "short")
    step = panel["fieldConfig"]["defaults"].get("custom", {}).get("lineInterpolation") == "stepAfter"
    series = [(legend, synthetic(panel, t["refId"], legend, step))
              for t in panel["targets"] for legend in legends(t.get("legendFormat", ""), t["expr"])]
    ax.set_title(panel["title"], fontsize=9, loc="left")
    if panel["type"] == "stat":
        ax.set_axis_off()
        legend, values = series[-1]
        text_mode = panel.get("options", {}).get("textMode", "value")
        ax.text(0.5, 0.4, legend if text_mode == "name" else _fmt(values[-1], unit), ha="center", va="center",
                fontsize=18, color="#1f7a1f", transform=ax.transAxes)
        return
    hours = np.linspace(-24, 0, POINTS)
    for legend, values in series:
        ax.plot(hours, values, label=legend, linewidth=1, drawstyle="steps-post" if step else "default")
    ax.tick_params(labelsize=6)
    ax.set_xlim(-24, 0)
    ax.set_xlabel("hours", fontsize=6, labelpad=1)
    ax.text(1.0, 1.02, unit, fontsize=6, ha="right", transform=ax.transAxes, color="grey")
    ax.legend(fontsize=5, loc="upper left", ncol=2, frameon=False)
    ax.grid(alpha=0.3)


def render_dashboard(dashboard: dict[str, Any], out: Path, source_hash: str) -> int:
    """Draw every panel at its gridPos; returns the number of panels drawn."""
    panels = dashboard["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(16, 0.32 * rows + 0.8))
    top = 1 - 0.8 / fig.get_figheight()
    fig.suptitle(f"{dashboard['title']}  (synthetic test data)", x=0.01, ha="left", fontsize=12, y=0.995)
    for panel in panels:
        g = panel["gridPos"]
        left, width = g["x"] / 24 + 0.012, g["w"] / 24 - 0.024
        height = g["h"] / rows * top - 0.05 / fig.get_figheight() * 10
        bottom = top - (g["y"] + g["h"]) / rows * top + 0.35 / fig.get_figheight()
        _draw(fig.add_axes((left, bottom, width, max(height, 0.02))), panel)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, metadata={"Source": source_hash, "Description": "synthetic test data"})
    plt.close(fig)
    return len(panels)


def main() -> int:
    for path in sorted(SOURCES.glob("*.json")):
        raw = path.read_bytes()
        drawn = render_dashboard(json.loads(raw), OUT / f"{path.stem}.png", hashlib.sha256(raw).hexdigest())
        print(f"{OUT.relative_to(ROOT) / (path.stem + '.png')}: {drawn} panels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
