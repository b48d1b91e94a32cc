"""What a monitoring pass shows: metrics and an HTML report (with PNG plots) in its MLflow run,
and a summary table for the terminal."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from workloads.monitoring.drift import FeatureDrift
from workloads.monitoring.profile import ReferenceProfile
from workloads.monitoring.result import MonitorResult

PLOTS = 4  # the most drifted features get a plot
MAX_METRICS = 1000  # what one MLflow log_batch call takes


def log_report(client: Any, run_id: str, result: MonitorResult, profile: ReferenceProfile | None,
               window: pd.DataFrame) -> str:
    """Log plots and the self-contained HTML report; returns the report's artifact URI."""
    figures: dict[str, bytes] = {}
    if result.drift and profile is not None:
        for f in result.drift.most_drifted(PLOTS):
            figures[f.name] = figure_png(f.name, profile, window[f.name])
    with tempfile.TemporaryDirectory() as tmp:
        for name, png in figures.items():
            path = Path(tmp) / f"{''.join(c if c.isalnum() or c in '-_.' else '_' for c in name)}.png"
            path.write_bytes(png)
            client.log_artifact(run_id, str(path), "plots")
        path = Path(tmp) / "report.html"
        path.write_text(report_html(result, figures))
        client.log_artifact(run_id, str(path))
    return f"{client.get_run(run_id).info.artifact_uri}/report.html"


def metrics(result: MonitorResult, now: datetime) -> list[Any]:
    """The run's metrics: window size, drift per feature, the champion's metric."""
    from mlflow.entities import Metric

    values: dict[str, float] = {"window.rows": result.window["rows"]}
    if result.drift:
        d = result.drift
        values |= {"drift.share": d.drift_share, "drift.n_drifted": d.n_drifted, "drift.max_psi": d.max_psi}
        for f in _rows(result):
            for key, value in (("psi", f.psi), ("statistic", f.statistic), ("p_value", f.p_value),
                               ("null_rate", f.null_rate_current), ("drifted", float(f.drifted))):
                if value is not None and math.isfinite(value):
                    values[f"{key}.{f.name}"] = value
    if result.performance:
        p = result.performance
        values |= {f"metric.{p.metric}": p.current, f"holdout.{p.metric}": p.holdout, "metric.drop": p.drop,
                   "labelled.rows": p.labelled_rows}
    ts = int(now.timestamp() * 1000)
    return [Metric(k, float(v), ts, 0) for k, v in values.items()][:MAX_METRICS]


def summary_table(result: MonitorResult) -> Any:
    """The result for a terminal (rich)."""
    from rich.table import Table

    table = Table(title=f"{result.endpoint}: {result.status}  ({result.model_name} v{result.model_version})")
    for column in ("feature", "test", "statistic", "p-value", "PSI", "null rate", "drifted"):
        table.add_column(column)
    for f in _rows(result):
        table.add_row(f.name, f.test, _fmt(f.statistic), _fmt(f.p_value), _fmt(f.psi), _null_rates(f),
                      "[red]yes[/red]" if f.drifted else "")
    lines = [*result.reasons, f"window: {result.window['rows']} rows"]
    if result.performance:
        p = result.performance
        lines.append(f"{p.metric}: holdout {p.holdout:.4f}, window {p.current:.4f} ({p.labelled_rows} labelled)")
    if result.alert:
        lines.append(f"alert sent via {', '.join(result.alert.channels)}")
    if result.retraining:
        r = result.retraining
        lines.append(f"retraining: {r.reason}" + (f" -> v{r.version} {r.decision}" if r.version else "")
                     + (f" ({r.error})" if r.error else ""))
    lines.append(f"report: {result.report_uri} (run {result.run_id})")
    table.caption = "\n".join(lines)
    return table


def report_html(result: MonitorResult, figures: dict[str, bytes]) -> str:
    esc = html.escape
    rows = ""
    for f in _rows(result):
        cells = [f.name, f.kind, f.test, _fmt(f.statistic), _fmt(f.p_value), _fmt(f.psi), _null_rates(f),
                 ", ".join(f.unseen_categories), "yes" if f.drifted else "", "; ".join(f.reasons)]
        rows += "<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in cells) + "</tr>\n"
    perf = ""
    if result.performance:
        p = result.performance
        perf = (f"<h2>Performance</h2><p>{esc(p.metric)}: holdout {p.holdout:.4f}, window {p.current:.4f} "
                f"on {p.labelled_rows} labelled rows (drop {p.drop:.4f}{', decayed' if p.decayed else ''})</p>")
    images = "".join(
        f'<figure><img alt="{esc(n)}" src="data:image/png;base64,{base64.b64encode(b).decode()}"></figure>'
        for n, b in figures.items()
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>monitor {esc(result.endpoint)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 6px}}figure{{display:inline-block;margin:4px}}</style></head><body>
<h1>{esc(result.endpoint)}: {esc(result.status)}</h1>
<p>model {esc(result.model_name)} v{esc(result.model_version)} (@{esc(result.alias)}); window
{esc(json.dumps(result.window))}</p>
<ul>{"".join(f"<li>{esc(r)}</li>" for r in result.reasons) or "<li>nothing above the thresholds</li>"}</ul>
{perf}
<h2>Features</h2><table><tr><th>feature</th><th>kind</th><th>test</th><th>statistic</th><th>p-value</th>
<th>PSI</th><th>null rate</th><th>unseen</th><th>drifted</th><th>why</th></tr>
{rows}</table><h2>Most drifted</h2>{images}</body></html>"""


def figure_png(name: str, profile: ReferenceProfile, current: pd.Series) -> bytes:
    """Reference vs current distribution of one feature (matplotlib Agg, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    if name in profile.numeric:
        _histograms(ax, profile.numeric[name].sorted_values, current)
    else:
        _category_bars(ax, profile.categorical[name].categories, profile.categorical[name].counts, current)
    ax.set_title(name)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _histograms(ax: Any, ref: np.ndarray, current: pd.Series) -> None:
    cur = current.to_numpy(dtype=float, na_value=np.nan)
    cur = cur[~np.isnan(cur)]
    both = np.concatenate([ref[[0, -1]], [cur.min(), cur.max()] if len(cur) else []])
    lo, hi = both.min(), both.max()
    # A list, not the array: matplotlib's stubs type `bins` as int | Sequence[float] | str.
    bins = np.linspace(lo, hi, 31).tolist() if hi > lo else 10
    ax.hist(ref, bins=bins, density=True, alpha=0.5, label=f"reference (n={len(ref)})")
    ax.hist(cur, bins=bins, density=True, alpha=0.5, label=f"current (n={len(cur)})")


def _category_bars(ax: Any, categories: np.ndarray, counts: np.ndarray, current: pd.Series) -> None:
    now = current.dropna().astype(str).value_counts()
    cats = list(categories) + [c for c in now.index if c not in set(categories)]
    x = np.arange(len(cats))
    ref_share = dict(zip(categories, counts / max(counts.sum(), 1), strict=True))
    ax.bar(x - 0.2, [ref_share.get(c, 0) for c in cats], 0.4, label="reference")
    ax.bar(x + 0.2, [now.get(c, 0) / max(now.sum(), 1) for c in cats], 0.4, label="current")
    ax.set_xticks(x, cats, rotation=30, ha="right", fontsize=8)


def _rows(result: MonitorResult) -> list[FeatureDrift]:
    """Every feature, then the prediction."""
    if result.drift is None:
        return []
    return result.drift.features + ([result.drift.prediction] if result.drift.prediction else [])


def _null_rates(f: FeatureDrift) -> str:
    return f"{f.null_rate_reference:.3f} → {f.null_rate_current:.3f}"


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.4g}"
