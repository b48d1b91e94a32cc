"""The report as one self-contained HTML page (jinja2, autoescaped: tags and reasons are user text)."""

from __future__ import annotations

from workloads.lifecycle.report import VersionReport

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ r.model }} v{{ r.version }} ({{ r.environment }})</title>
<style>
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222 }
table { border-collapse: collapse; margin: .5em 0 1.5em } td, th { border: 1px solid #ccc; padding: .25em .6em;
text-align: left; vertical-align: top } th { background: #f3f3f3 } pre { background: #f7f7f7; padding: .8em;
overflow-x: auto } .champion { color: #070 } .challenger { color: #a60 } .muted { color: #777 }
</style></head><body>
<h1>{{ r.model }} v{{ r.version }} <span class="muted">in {{ r.environment }}</span></h1>
<p>Aliases now: <b>{{ r.aliases | join(", ") or "none" }}</b>. Decision: <b class="{{ r.decision }}">
{{ r.decision }}</b> ({{ r.reason }}). Registered {{ r.created }}; run <code>{{ r.run_id }}</code>;
model <code>{{ r.model_uri }}</code>. Report generated {{ r.generated_at }} from {{ r.tracking_uri }}.</p>

<h2>Data</h2>
<table>{% for k in ["name", "digest", "uri", "source_uri", "target", "task", "dropped_features"] %}
{% if r.dataset[k] %}<tr><th>{{ k }}</th><td><code>{{ r.dataset[k] }}</code></td></tr>{% endif %}{% endfor %}
<tr><th>split</th><td>seed {{ r.dataset.split.seed }}, holdout {{ r.dataset.split.holdout_fraction }}</td></tr>
</table>
{% if r.dataset.schema %}<table><tr><th>column</th><th>kind</th><th>constraints</th></tr>
{% for name, c in r.dataset.schema.columns.items() %}<tr><td>{{ name }}</td><td>{{ c.kind }}</td>
<td class="muted">{% for k, v in c.items() if k != "kind" and v is not none %}{{ k }}={{ v }} {% endfor %}
</td></tr>{% endfor %}</table>{% endif %}

<h2>Code</h2>
<p>commit <code>{{ r.code.commit or "unknown" }}</code>{% if r.code.dirty == "true" %} (uncommitted changes){% endif %};
image <code>{{ r.code.image or "none recorded" }}</code>; spec hash <code>{{ r.spec.hash }}</code></p>
{% if r.spec.yaml %}<details><summary>training spec</summary><pre>{{ r.spec.yaml }}</pre></details>{% endif %}

<h2>Search</h2>
<table><tr><th>rank</th><th>family</th><th>params</th><th>cv score</th><th>std</th></tr>
{% for c in r.search[:20] %}<tr><td>{{ loop.index }}</td><td>{{ c.family }}</td><td><code>{{ c.params }}</code></td>
<td>{{ "%.4f" | format(c.cv_score) }}</td><td>{{ "%.4f" | format(c.cv_std) }}</td></tr>{% endfor %}</table>

<h2>Metrics</h2>
<table>{% for k, v in r.metrics.items() %}<tr><th>{{ k }}</th><td>{{ "%.4f" | format(v) }}</td></tr>{% endfor %}</table>

<h2>Gate decisions</h2>
<table><tr><th>when</th><th>what</th><th>where</th><th>decision</th><th>rows</th><th>challenger</th>
<th>champion</th><th>champion recorded</th><th>reason</th></tr>
{% for g in r.gates %}{% for name, c in [("holdout", g.report.holdout), ("recent", g.report.recent)] if c %}
<tr><td>{{ g.at }}</td><td>{{ g.kind }} (v{{ g.version }}, {{ name }})</td><td>{{ g.environment }}</td>
<td class="{{ g.report.decision }}">{{ g.report.decision }}</td><td>{{ c.rows }}</td>
<td>{{ "%.4f" | format(c.challenger) }}</td>
<td>{{ "%.4f" | format(c.champion) if c.champion is not none else "-" }}{% if g.report.champion_version %}
(v{{ g.report.champion_version }}){% endif %}</td>
<td>{{ "%.4f" | format(c.champion_recorded) if c.champion_recorded is not none else "-" }}</td>
<td>{{ g.report.metric }}: {{ g.report.reason }}</td></tr>{% endfor %}{% endfor %}</table>

<h2>Promotions</h2>
{% if r.promotions %}<table><tr><th>when</th><th>from</th><th>into</th><th>run</th><th>by</th></tr>
{% for p in r.promotions %}<tr><td>{{ p.at }}</td><td>{{ p.source }}</td><td>{{ p.target }}</td>
<td><code>{{ p.run_id }}</code></td><td>{{ p.by }}</td></tr>{% endfor %}</table>
{% else %}<p class="muted">Trained here; never promoted into this environment.</p>{% endif %}

<h2>Monitoring</h2>
{% if r.monitoring %}<table><tr><th>started</th><th>endpoint</th><th>status</th><th>figures</th><th>alert</th>
<th>retraining</th></tr>{% for m in r.monitoring %}<tr><td>{{ m.started }}</td><td>{{ m.endpoint }} @{{ m.alias }}</td>
<td>{{ m.status or m.run_status }}{% if m.error %}: {{ m.error }}{% endif %}</td>
<td>{% for k, v in m.metrics.items() %}{{ k }} {{ "%.4g" | format(v) }}<br>{% endfor %}
{% for k, v in m.tags.items() %}{{ k }}={{ v }}<br>{% endfor %}</td>
<td>{{ m.alert.channels | join(", ") if m.alert else "" }}</td>
<td>{% if m.retraining %}{{ m.retraining.reason }}{% if m.retraining.version %} (v{{ m.retraining.version }},
{{ m.retraining.decision }}){% endif %}{% endif %}</td></tr>{% endfor %}</table>
{% else %}<p class="muted">No monitoring run names this version.</p>{% endif %}

<h2>Served</h2>
<ul>{% for e in r.served.events %}<li>{{ e.at }}: {{ e.what }}</li>{% endfor %}</ul>
<p>Not recorded:</p><ul class="muted">{% for m in r.served.missing %}<li>{{ m }}</li>{% endfor %}</ul>
</body></html>
"""


def html(report: VersionReport) -> str:
    from jinja2 import Environment, StrictUndefined

    template = Environment(autoescape=True, undefined=StrictUndefined).from_string(TEMPLATE)
    return template.render(r=report.model_dump(mode="json"))
