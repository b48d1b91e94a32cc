"""Observability as rendered: scrape configs, dashboards, alert rules, the monitoring stack's Helm releases.

The central check: every PromQL expression we ship (dashboard targets, variable queries, alert rules)
names only metrics that exist: those our code registers (found in workloads/ by reading the
prometheus_client constructor calls, plus the capture bridge built for real) and those the installed
stack exports (components/stack_metrics.py). Custom resources (ServiceMonitor, PrometheusRule) are not in
kubernetes-validate's schemas, so they get a structural check here; everything else validates strictly.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
import json
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes_validate
import pytest
import yaml

from components import observability as obs
from components.alert_rules import cron_period_seconds
from components.config import ConfigError, parse_environment
from components.manifests import to_manifests
from components.render import RenderResult, load_stack_config, render_stack, stack_file
from components.stack_metrics import stack_metric_names
from tests.infra.conftest import ADMIN_PASSWORD

ROOT = Path(__file__).resolve().parents[2]
MONITORING_API = "monitoring.coreos.com/v1"
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__range", "__range_s", "__interval_ms"}
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")

# --- renders with observability switched on ---------------------------------------------------------


def render_with(stack: str, observability: dict[str, Any], **more: Any) -> RenderResult:
    config = load_stack_config(stack_file(stack))
    config["mlops-platform:observability"] = observability
    for key, value in more.items():
        config[f"mlops-platform:{key}"] = value
    return render_stack(stack, config=config, secrets={"trackingAdminPassword": ADMIN_PASSWORD}, stack_name=stack)


@pytest.fixture(scope="module")
def installed() -> RenderResult:
    """dev (an EKS cluster it creates, with a GPU pool) installing the monitoring stack."""
    return render_with("dev", {"enabled": True})


@pytest.fixture(scope="module")
def existing_operator() -> RenderResult:
    """ci (on dev's cluster) targeting the stack dev installed."""
    return render_with("ci", {"operator": True})


def raw_config(stack: str, **observability: Any) -> dict[str, Any]:
    raw = {k.split(":", 1)[1]: v for k, v in load_stack_config(stack_file(stack)).items()
           if k.startswith("mlops-platform:") and not (isinstance(v, dict) and set(v) == {"secure"})}
    if observability:
        raw["observability"] = observability
    return raw


def of_kind(result: RenderResult, kind: str) -> list[dict[str, Any]]:
    return [m for m in to_manifests(result) if m["kind"] == kind]


def named(result: RenderResult, kind: str, name: str) -> dict[str, Any]:
    [found] = [m for m in of_kind(result, kind) if m["metadata"]["name"] == name]
    return found


# --- PromQL: the metric names an expression reads --------------------------------------------------

_TOKEN = re.compile(r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<var>\$\{?\w+\}?)
  | (?P<number>(?:[0-9]+(?:ms|[smhdwy]))+(?![\w:])|[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>\S)
""", re.X)
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
KEYWORDS = GROUPING | {"bool", "and", "or", "unless", "offset", "inf", "nan"}
FUNCTIONS = set("""
    abs absent absent_over_time avg avg_over_time bottomk ceil changes clamp clamp_max clamp_min count
    count_over_time count_values day_of_month day_of_week days_in_month delta deriv exp floor group
    histogram_quantile holt_winters hour idelta increase irate label_join label_replace last_over_time ln log10
    log2 max max_over_time min min_over_time minute month predict_linear present_over_time quantile
    quantile_over_time rate resets round scalar sgn sort sort_desc sqrt stddev stddev_over_time stdvar sum
    sum_over_time time timestamp topk vector year
""".split())


def promql_tokens(expr: str) -> list[tuple[str, str]]:
    return [(m.lastgroup or "", m.group()) for m in _TOKEN.finditer(expr)]


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression; raises on an unknown function (a typo is not a metric)."""
    tokens = promql_tokens(expr)
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if text == "{":  # label matchers: names there are labels
            while i < len(tokens) and tokens[i][1] != "}":
                i += 1
        elif kind == "ident" and text in GROUPING and following == "(":
            while i < len(tokens) and tokens[i][1] != ")":  # a label list
                i += 1
        elif kind == "ident" and text not in KEYWORDS:
            if following == "(":
                if text not in FUNCTIONS:
                    raise ValueError(f"unknown PromQL function {text!r} in {expr!r}")
            elif not (text in FUNCTIONS and following in ("by", "without")):  # `sum by (le) (...)`
                names.add(text)
        i += 1
    return names


def variable_query_names(query: str) -> set[str]:
    """A Grafana Prometheus variable query: label_values(<selector>, label) or query_result(<expr>)."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query) or \
        re.fullmatch(r"\s*query_result\((.*)\)\s*", query)
    if match:
        return promql_metric_names(match.group(1))
    if re.fullmatch(r"\s*label_values\(\s*\w+\s*\)\s*", query):
        return set()
    return promql_metric_names(query)


@pytest.mark.parametrize(("expr", "expected"), [
    ('sum by (le) (rate(x_bucket{namespace="$namespace", status=~"5.."}[$__rate_interval]))', {"x_bucket"}),
    ("histogram_quantile(0.99, sum by (namespace, le) (rate(a[5m]))) > 0.5", {"a"}),
    ('max by (n, p) (kube_node_labels) * on (node) group_left (p) b{c="d"} offset 5m', {"kube_node_labels", "b"}),
    ('count(k{x="y"} == 1) or vector(0)', {"k"}),
    ('time() - max(m{e="or by on"})', {"m"}),
    ("sum without (pod) (u) / ignoring (x) v unless w", {"u", "v", "w"}),
    ("1e3 * DCGM_FI_DEV_GPU_UTIL + 2.5", {"DCGM_FI_DEV_GPU_UTIL"}),
    ("absent(m{a='b'})", {"m"}),
])
def test_promql_metric_names(expr: str, expected: set[str]) -> None:
    assert promql_metric_names(expr) == expected


def test_a_misspelled_function_is_an_error_not_a_metric() -> None:
    with pytest.raises(ValueError, match="histogram_quantil"):
        promql_metric_names("histogram_quantil(0.9, rate(x[5m]))")


def test_variable_queries() -> None:
    assert variable_query_names('label_values(mlops_x{namespace="$namespace"}, mlops_endpoint)') == {"mlops_x"}
    assert variable_query_names("label_values(namespace)") == set()


# --- the metrics that exist --------------------------------------------------------------------------

CONSTRUCTORS = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram", "Summary": "summary",
                "Info": "info", "Enum": "gauge", "CounterMetricFamily": "counter", "GaugeMetricFamily": "gauge",
                "HistogramMetricFamily": "histogram", "SummaryMetricFamily": "summary", "InfoMetricFamily": "info"}


def series_names(name: str, kind: str) -> set[str]:
    """The series a metric family is stored as (prometheus_client's exposition)."""
    if kind == "counter":
        base = name.removesuffix("_total")
        return {f"{base}_total", f"{base}_created"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_count", f"{name}_sum", f"{name}_created"}
    if kind == "summary":
        return {name, f"{name}_count", f"{name}_sum", f"{name}_created"}
    if kind == "info":
        return {f"{name}_info"}
    return {name}


def registered_in_source(path: Path) -> dict[str, str]:
    """name -> kind for every prometheus_client constructor called with a literal name in a file."""
    found: dict[str, str] = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
        first = node.args[0]
        if func in CONSTRUCTORS and isinstance(first, ast.Constant) and isinstance(first.value, str):
            found[first.value] = CONSTRUCTORS[func]
    return found


def modules_registering(package: str) -> dict[str, dict[str, str]]:
    """module name -> its metrics, for every module of a package that registers any."""
    root = ROOT / package.replace(".", "/")
    out = {}
    for path in sorted(root.rglob("*.py")):
        metrics = registered_in_source(path)
        if metrics:
            out[".".join(path.relative_to(ROOT).with_suffix("").parts)] = metrics
    return out


def bridge_series() -> set[str]:
    """The capture bridge's metrics, built for real (its names are data, not constructor literals)."""
    from prometheus_client import CollectorRegistry

    from workloads.serving.prometheus import capture_bridge

    registry = CollectorRegistry()
    stats = SimpleNamespace(records_written=1, records_dropped=0, flush_errors=0, buffered_rows=0)
    capture_bridge(registry, SimpleNamespace(stats=stats)).sync()
    return {s.name for family in registry.collect() for s in family.samples}


@pytest.fixture(scope="module")
def exported() -> set[str]:
    names: set[str] = set(stack_metric_names()) | bridge_series()
    for module, metrics in modules_registering("workloads").items():
        importlib.import_module(module)  # the module that defines them must import, whatever it is called now
        for name, kind in metrics.items():
            names |= series_names(name, kind)
    return names


def test_the_serving_and_monitoring_metrics_are_found() -> None:
    """Wherever the serving split put them, the modules registering our metrics are found and import."""
    modules = modules_registering("workloads")
    everything = {name for metrics in modules.values() for name in metrics}
    assert {"mlops_serving_requests", "mlops_serving_request_seconds", "mlops_serving_batch_rows",
            "mlops_serving_path_requests", "mlops_model_version_info"} <= everything
    assert {"mlops_monitoring_last_run_timestamp_seconds", "mlops_monitoring_feature_psi",
            "mlops_monitoring_drift_share", "mlops_monitoring_status"} <= everything
    assert any(m.startswith("workloads.serving") for m in modules)
    for module in modules:
        importlib.import_module(module)


def test_an_unexported_metric_is_caught(exported: set[str]) -> None:
    assert "mlops_serving_requests_total" in exported
    assert "mlops_capture_records_dropped_total" in exported
    assert promql_metric_names("rate(mlops_serving_requestz_total[5m])") - exported == {"mlops_serving_requestz_total"}


# --- dashboards ----------------------------------------------------------------------------------------


def dashboard_problems(d: dict[str, Any]) -> list[str]:
    """Schema-ish checks of a Grafana dashboard: what Grafana needs to load and query it."""
    problems = []
    if not (isinstance(d.get("uid"), str) and 0 < len(d["uid"]) <= obs.GRAFANA_UID_MAX):
        problems.append(f"uid {d.get('uid')!r} is not a string of 1-{obs.GRAFANA_UID_MAX} characters")
    for key, kind in (("title", str), ("schemaVersion", int), ("panels", list), ("templating", dict)):
        if not isinstance(d.get(key), kind):
            problems.append(f"{key} missing or not a {kind.__name__}")
    if problems:
        return problems
    variables = {v["name"]: v for v in d["templating"].get("list", [])}
    ds = variables.get("datasource", {})
    if ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("no datasource variable of type datasource / prometheus")
    ids, cells = set(), set()
    for p in d["panels"]:
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids or not isinstance(p.get("id"), int):
            problems.append(f"{where}: id missing or repeated")
        ids.add(p.get("id"))
        if p.get("type") not in ("timeseries", "stat") or not p.get("title"):
            problems.append(f"{where}: type must be timeseries or stat, with a title")
        g = p.get("gridPos", {})
        if not all(isinstance(g.get(k), int) for k in "xywh") or g["x"] + g["w"] > 24 or min(g.values()) < 0:
            problems.append(f"{where}: gridPos {g} is not within the 24-column grid")
        else:
            mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
            if mine & cells:
                problems.append(f"{where}: overlaps another panel")
            cells |= mine
        targets = p.get("targets") or []
        if not targets or len({t.get("refId") for t in targets}) != len(targets):
            problems.append(f"{where}: needs targets with distinct refIds")
        for source in [p, *targets]:
            if source.get("datasource") != {"type": "prometheus", "uid": "${datasource}"}:
                problems.append(f"{where}: datasource must be the prometheus ${{datasource}} variable")
        for t in targets:
            if not t.get("expr"):
                problems.append(f"{where}: target {t.get('refId')} has no expr")
            used = {m.strip("${}") for m in re.findall(r"\$\{?\w+\}?", t.get("expr", ""))}
            if used - set(variables) - BUILTIN_VARIABLES:
                problems.append(f"{where}: uses undefined variables {sorted(used - set(variables) - BUILTIN_VARIABLES)}")
    return problems


def exprs_of(d: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every target; variable queries are returned separately by variable_queries."""
    return [(f"{d['uid']} panel {p['id']} {p['title']!r} {t['refId']}", t["expr"])
            for p in d["panels"] for t in p["targets"]]


def variable_queries(d: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for v in d["templating"]["list"]:
        if v.get("type") == "query":
            query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            out.append((f"{d['uid']} variable {v['name']}", query))
    return out


SOURCES = obs.dashboard_sources()


def test_the_expected_dashboards_ship() -> None:
    assert set(SOURCES) == {"endpoints", "model-drift", "jobs", "node-pools"}
    assert len({d["uid"] for d in SOURCES.values()}) == len(SOURCES)


@pytest.mark.parametrize("stem", sorted(SOURCES))
def test_dashboard_is_valid_grafana_json(stem: str) -> None:
    assert dashboard_problems(SOURCES[stem]) == []


@pytest.mark.parametrize("stem", sorted(SOURCES))
def test_dashboard_reads_only_exported_metrics(stem: str, exported: set[str]) -> None:
    d = SOURCES[stem]
    unknown = {where: sorted(promql_metric_names(e) - exported) for where, e in exprs_of(d)}
    unknown |= {where: sorted(variable_query_names(q) - exported) for where, q in variable_queries(d)}
    assert {w: u for w, u in unknown.items() if u} == {}
    assert all(promql_metric_names(e) for _, e in exprs_of(d)), "an expression that reads no metric"


@pytest.mark.parametrize("broken", [
    lambda d: d.pop("uid"),
    lambda d: d["panels"][0].update(gridPos={"x": 20, "y": 0, "w": 8, "h": 4}),
    lambda d: d["panels"][1].update(id=d["panels"][0]["id"]),
    lambda d: d["panels"][0]["targets"][0].update(datasource={"type": "prometheus", "uid": "abc"}),
    lambda d: d["panels"][0]["targets"][0].update(expr="rate(x{n=\"$nowhere\"}[5m])"),
    lambda d: d["panels"][1].update(gridPos=dict(d["panels"][0]["gridPos"])),
    lambda d: d["templating"]["list"].pop(0),
])
def test_a_broken_dashboard_is_caught(broken: Any) -> None:
    d = json.loads(json.dumps(SOURCES["endpoints"]))
    broken(d)
    assert dashboard_problems(d)


def test_uids_stay_unique_and_short_per_environment() -> None:
    long = "e" * 57
    uids = {obs.dashboard_uid(d["uid"], env) for d in SOURCES.values() for env in ("dev", "ci-1234", long, long[:-1])}
    assert len(uids) == 4 * len(SOURCES)
    assert max(len(u) for u in uids) <= obs.GRAFANA_UID_MAX


# --- rendered: dashboards, alert rules, scrape configs ------------------------------------------------


def dashboard_maps(result: RenderResult) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in of_kind(result, "ConfigMap")
            if m["metadata"]["name"].startswith("dashboard-")}


def check_dashboard_maps(result: RenderResult, labels: dict[str, str], owns_cluster: bool) -> None:
    maps = dashboard_maps(result)
    expected = {f"dashboard-{s}" for s in SOURCES if owns_cluster or s not in obs.CLUSTER_DASHBOARDS}
    assert set(maps) == expected
    namespace = f"mlops-{result.stack}"
    for name, cm in maps.items():
        assert labels.items() <= cm["metadata"]["labels"].items()
        assert cm["metadata"]["annotations"] == {obs.FOLDER_ANNOTATION: obs.FOLDER}
        [(key, text)] = cm["data"].items()
        assert key == f"{name.removeprefix('dashboard-')}.json" and len(text) < 1_000_000
        d = json.loads(text)
        assert dashboard_problems(d) == [] and d["uid"].endswith(result.stack) and f"({result.stack})" in d["title"]
        ns = {v["name"]: v for v in d["templating"]["list"]}.get("namespace")
        if ns is not None:  # fixed to the environment, hidden
            assert (ns["type"], ns["query"], ns["hide"]) == ("constant", namespace, 2)


def test_the_shipped_stacks_opt_in(rendered: dict[str, RenderResult]) -> None:
    """dev, staging, prod install the monitoring stack; ci uses dev's operator; local targets an existing one."""
    for stack in ("dev", "staging", "prod"):
        assert "kube-prometheus-stack" in releases(rendered[stack]), stack
    ci = rendered["ci"]
    assert not releases(ci)
    assert {m["kind"] for m in to_manifests(ci) if m["apiVersion"] == MONITORING_API} == {"ServiceMonitor",
                                                                                        "PrometheusRule"}


@pytest.mark.parametrize("stack", ["local"])
def test_default_stacks_ship_dashboards_and_a_rules_file(rendered: dict[str, RenderResult], stack: str,
                                                        exported: set[str]) -> None:
    """Observability off (the defaults): dashboards and a rules file; no CRDs, no Helm release of ours; no
    Pushgateway, so no monitoring alerts (tests/infra/test_observability_push.py)."""
    result = rendered[stack]
    check_dashboard_maps(result, {"grafana_dashboard": "1"}, owns_cluster=stack != "ci")
    assert not [m for m in to_manifests(result) if m["apiVersion"] == MONITORING_API]
    rules = yaml.safe_load(named(result, "ConfigMap", "mlops-alert-rules")["data"]["mlops-alerts.rules.yaml"])
    check_rule_groups(rules["groups"], exported, monitoring=False)


def check_rule_groups(groups: list[dict[str, Any]], exported: set[str], *, monitoring: bool = True) -> None:
    assert len({g["name"] for g in groups}) == len(groups)
    alerts = set()
    for group in groups:
        assert group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"} and rule["alert"]
            assert DURATION.match(rule["for"]), rule
            assert all(isinstance(v, str) for v in [*rule["labels"].values(), *rule["annotations"].values()])
            assert rule["labels"]["severity"] in ("warning", "critical")
            unknown = promql_metric_names(rule["expr"]) - exported
            assert not unknown, f"{rule['alert']} reads {unknown}"
            alerts.add(rule["alert"])
    assert {"MlopsEndpointErrorRate", "MlopsEndpointLatencyP99", "MlopsCaptureDropping", "MlopsJobFailed",
            "MlopsCronJobFailed"} <= alerts
    assert ({"MlopsMonitoringNotRun", "MlopsMonitoringNeverReported"} <= alerts) is monitoring


# --- custom resources, checked structurally ---------------------------------------------------------

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
SERVICE_MONITOR_KEYS = {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels", "podTargetLabels"}
ENDPOINT_KEYS = {"port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels", "basicAuth", "relabelings",
                 "metricRelabelings", "tlsConfig"}


def _str_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def custom_resource_problems(m: dict[str, Any]) -> list[str]:
    """ServiceMonitor / PrometheusRule: the fields and types the operator's CRDs require (a subset)."""
    problems = []
    meta = m.get("metadata", {})
    if m.get("apiVersion") != MONITORING_API or m.get("kind") not in ("ServiceMonitor", "PrometheusRule"):
        return [f"not a {MONITORING_API} ServiceMonitor/PrometheusRule"]
    if not _NAME.match(meta.get("name", "")) or not meta.get("namespace") or not _str_map(meta.get("labels", {})):
        problems.append("metadata needs a DNS name, a namespace and string labels")
    spec = m.get("spec", {})
    if m["kind"] == "ServiceMonitor":
        if set(spec) - SERVICE_MONITOR_KEYS:
            problems.append(f"unknown spec keys {sorted(set(spec) - SERVICE_MONITOR_KEYS)}")
        if not _str_map(spec.get("selector", {}).get("matchLabels")) or not spec["selector"]["matchLabels"]:
            problems.append("selector.matchLabels must be a non-empty string map")
        names = spec.get("namespaceSelector", {}).get("matchNames", [])
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            problems.append("namespaceSelector.matchNames must be strings")
        for e in spec.get("endpoints") or [None]:
            if not isinstance(e, dict) or set(e) - ENDPOINT_KEYS or not isinstance(e.get("port"), str) \
                    or not str(e.get("path", "/")).startswith("/") or not DURATION.match(e.get("interval", "30s")):
                problems.append(f"endpoint {e} is not port (name), path, interval, ...")
            elif "basicAuth" in e and not all(set(e["basicAuth"].get(k, {})) == {"name", "key"}
                                               for k in ("username", "password")):
                problems.append("basicAuth needs username and password secret key selectors")
    else:
        groups = spec.get("groups")
        if set(spec) != {"groups"} or not isinstance(groups, list) or not groups:
            problems.append("spec must be {groups: [...]}")
        for g in groups or []:
            if not isinstance(g.get("name"), str) or not g.get("rules"):
                problems.append(f"group {g.get('name')!r} needs a name and rules")
            for r in g.get("rules", []):
                if ("alert" in r) == ("record" in r) or not isinstance(r.get("expr"), str) \
                        or not DURATION.match(r.get("for", "0s")) or not _str_map(r.get("labels", {})):
                    problems.append(f"rule {r.get('alert') or r.get('record')!r} is malformed")
    return problems


@pytest.mark.parametrize("broken", [
    {"kind": "ServiceMonitor", "spec": {"selector": {}, "endpoints": [{"port": "http"}]}},
    {"kind": "ServiceMonitor", "spec": {"selector": {"matchLabels": {"a": "b"}}, "endpoints": [{"port": 80}]}},
    {"kind": "ServiceMonitor", "spec": {"selector": {"matchLabels": {"a": "b"}}, "endpoints": []}},
    {"kind": "ServiceMonitor", "spec": {"selector": {"matchLabels": {"a": "b"}}, "endpoint": [{"port": "http"}]}},
    {"kind": "PrometheusRule", "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expr": "up", "for": "5 min"}]}]}},
    {"kind": "PrometheusRule", "spec": {"groups": [{"name": "g", "rules": [{"expr": "up"}]}]}},
    {"kind": "PrometheusRule", "spec": {"groups": []}},
])
def test_a_broken_custom_resource_is_caught(broken: dict[str, Any]) -> None:
    manifest = {"apiVersion": MONITORING_API, "metadata": {"name": "x", "namespace": "ns"}, **broken}
    assert custom_resource_problems(manifest)


def check_all_objects(result: RenderResult) -> list[dict[str, Any]]:
    """Our objects validate: built-in kinds strictly against Kubernetes' schemas, CRs structurally."""
    problems, customs = [], []
    for m in to_manifests(result):
        if m["apiVersion"] == MONITORING_API:
            customs.append(m)
            problems += [f"{m['kind']}/{m['metadata']['name']}: {p}" for p in custom_resource_problems(m)]
        elif m["metadata"]["name"].startswith(("dashboard-", "mlops-alert")):
            try:
                kubernetes_validate.validate(m, "1.31", strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{m['kind']}/{m['metadata']['name']}: {exc.message}")
    assert problems == []
    return customs


def unwrap(value: Any) -> Any:
    """A Pulumi secret on the wire -> its plain value (the render keeps Helm values as sent)."""
    from pulumi.runtime import rpc

    if isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig:
        return unwrap(value["value"])
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    return [unwrap(v) for v in value] if isinstance(value, list) else value


def releases(result: RenderResult) -> dict[str, Any]:
    return {r.inputs["name"]: r for r in result.of_type("kubernetes:helm.sh/v3:Release")}


def test_installed_stack_releases_are_pinned_and_wired(installed: RenderResult) -> None:
    found = releases(installed)
    assert set(found) >= {"kube-prometheus-stack", "pushgateway", "dcgm-exporter"}
    stack = found["kube-prometheus-stack"]
    assert stack.inputs["version"] == "88.5.3" and stack.inputs["namespace"] == "monitoring"
    assert stack.inputs["repositoryOpts"]["repo"] == "https://prometheus-community.github.io/helm-charts"
    assert "values" in stack.secret_inputs, "Grafana's admin password must stay a Pulumi secret"
    values = unwrap(stack.inputs["values"])
    assert isinstance(values["grafana"]["adminPassword"], str) and len(values["grafana"]["adminPassword"]) >= 16
    sidecar = values["grafana"]["sidecar"]["dashboards"]
    assert (sidecar["label"], sidecar["labelValue"], sidecar["searchNamespace"]) == ("grafana_dashboard", "1", "ALL")
    spec = values["prometheus"]["prometheusSpec"]
    for kind in ("serviceMonitor", "podMonitor", "rule"):
        assert spec[f"{kind}Selector"] == {"matchLabels": {"release": "kube-prometheus-stack"}}
        assert spec[f"{kind}NamespaceSelector"] == {}
    assert "nodes=[mlops-platform/pool]" in values["kube-state-metrics"]["metricLabelsAllowlist"]
    push = found["pushgateway"].inputs["values"]["serviceMonitor"]
    assert push["honorLabels"] is True and push["additionalLabels"] == {"release": "kube-prometheus-stack"}
    dcgm = found["dcgm-exporter"].inputs["values"]
    assert dcgm["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "mlops-platform/training", "operator": "Exists", "effect": "NoSchedule"} in dcgm["tolerations"]
    # The custom resources wait for the CRDs the stack's release installs.
    for r in installed.resources:
        if r.type.startswith("kubernetes:monitoring.coreos.com/"):
            assert stack.urn in r.depends_on, r.name


def test_installed_stack_scrapes_serving_and_tracking(installed: RenderResult, exported: set[str]) -> None:
    customs = check_all_objects(installed)
    assert sorted((m["kind"], m["metadata"]["name"]) for m in customs) == [
        ("PrometheusRule", "mlops-alerts"), ("ServiceMonitor", "mlops-serving"), ("ServiceMonitor", "mlops-tracking")]
    for m in customs:
        assert m["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert m["metadata"]["namespace"] == "mlops-dev"
    check_rule_groups(named(installed, "PrometheusRule", "mlops-alerts")["spec"]["groups"], exported)
    check_dashboard_maps(installed, {"grafana_dashboard": "1"}, owns_cluster=True)
    assert not [m for m in of_kind(installed, "ConfigMap") if m["metadata"]["name"] == "mlops-alert-rules"]


@pytest.mark.parametrize(("monitor", "services", "secret"), [
    ("mlops-serving", {"serve-churn"}, None), ("mlops-tracking", {"mlflow"}, "tracking-credentials")])
def test_service_monitors_select_exactly_the_services_they_scrape(installed: RenderResult, monitor: str,
                                                                  services: set[str], secret: str | None) -> None:
    """Against the rendered Services: a label or port renamed in serving/tracking breaks this, not the scrape."""
    spec = named(installed, "ServiceMonitor", monitor)["spec"]
    selector = spec["selector"]["matchLabels"]
    chosen = [s for s in of_kind(installed, "Service")
              if selector.items() <= s["metadata"].get("labels", {}).items()
              and s["metadata"]["namespace"] in spec["namespaceSelector"]["matchNames"]]
    assert {s["metadata"]["name"] for s in chosen} == services
    [endpoint] = spec["endpoints"]
    for service in chosen:
        [port] = [p for p in service["spec"]["ports"] if p.get("name") == endpoint["port"]]
        # ...and a container of the selected pods listens there.
        pods = [d["spec"]["template"] for d in of_kind(installed, "Deployment")
                if service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()]
        assert pods and all(port["targetPort"] in {p.get("name") for c in pod["spec"]["containers"]
                                                   for p in c.get("ports", [])} for pod in pods)
    if secret:  # tracking: the metrics sidecar's port (MLflow's own /metrics is admin-only), as the metrics user
        assert endpoint["basicAuth"]["username"]["name"] == secret
        assert named(installed, "Secret", secret)["stringData"].keys() >= {"MLFLOW_TRACKING_USERNAME",
                                                                            "MLFLOW_TRACKING_PASSWORD"}
    else:
        assert "basicAuth" not in endpoint


def test_existing_operator_stack_gets_monitors_and_rules_but_installs_nothing(existing_operator: RenderResult) -> None:
    customs = check_all_objects(existing_operator)
    assert {m["kind"] for m in customs} == {"ServiceMonitor", "PrometheusRule"}
    assert "kube-prometheus-stack" not in releases(existing_operator)
    check_dashboard_maps(existing_operator, {"grafana_dashboard": "1"}, owns_cluster=False)


def test_existing_stack_labels_come_from_config(exported: set[str]) -> None:
    result = render_with("local", {"operator": True, "selectorLabels": {"prometheus": "team-a"},
                                   "dashboardLabels": {"team-a/dashboard": "yes"}})
    customs = check_all_objects(result)
    assert customs and all(m["metadata"]["labels"]["prometheus"] == "team-a" for m in customs)
    check_dashboard_maps(result, {"team-a/dashboard": "yes"}, owns_cluster=True)
    assert not releases(result)


def test_no_gpu_pool_no_dcgm_exporter() -> None:
    cluster = load_stack_config(stack_file("dev"))["mlops-platform:cluster"]
    cpu_only = {**cluster, "trainingPools": [p for p in cluster["trainingPools"] if not p.get("gpu")]}
    result = render_with("dev", {"enabled": True}, cluster=cpu_only)
    assert "dcgm-exporter" not in releases(result) and "kube-prometheus-stack" in releases(result)


def test_scrape_annotations_and_peer(rendered: dict[str, RenderResult]) -> None:
    from components.config import EnvironmentConfig

    local = parse_environment(raw_config("local"))
    assert obs.serving_pod_annotations(local, 8080) == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "8080", "prometheus.io/path": "/metrics"}
    with_operator = EnvironmentConfig.model_validate({**raw_config("local"), "observability": {"operator": True}})
    assert obs.serving_pod_annotations(with_operator, 8080) == {}
    # The scraper peer is a valid NetworkPolicy `from` entry.
    policy = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
              "metadata": {"name": "allow-scrape", "namespace": "mlops-local"},
              "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                       "ingress": [{"from": [obs.scraper_peer(local)], "ports": [{"protocol": "TCP", "port": 8080}]}]}}
    kubernetes_validate.validate(policy, "1.31", strict=True)
    assert obs.scraper_peer(local)["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}


def test_pushgateway_url() -> None:
    assert obs.pushgateway_url(parse_environment(raw_config("local"))) is None
    assert obs.pushgateway_url(parse_environment(raw_config("dev", enabled=True))) == \
        "http://pushgateway.monitoring.svc.cluster.local:9091"
    assert obs.pushgateway_url(parse_environment(raw_config("ci", pushgatewayUrl="http://pg.obs.svc:9091"))) == \
        "http://pg.obs.svc:9091"


# --- config errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("stack", "observability", "message"), [
    ("ci", {"enabled": True}, "mlops-platform:observability.enabled: true but cluster.mode is 'existing'"),
    ("dev", {"enabled": True, "operator": False}, "observability.operator: false but enabled: true"),
    ("dev", {"dashboardLabels": {"a": "1", "b": "2"}}, "observability.dashboardLabels: "),
    ("dev", {"enabled": True, "selectorLabels": {"prometheus": "x"}}, "observability.selectorLabels: "),
    ("dev", {"chartVersion": "latest"}, "observability.chartVersion: \"latest\""),
    ("dev", {"selectorLabels": {"bad key!": "x"}}, "key 'bad key!' is not a label key"),
    ("dev", {"retention": "15 days"}, "observability.retention: \"15 days\""),
    ("dev", {"alertErrorRate": 2}, "observability.alertErrorRate: 2 is above 1"),
    ("dev", {"grafana": True}, "observability.grafana"),
])
def test_config_errors_name_key_value_and_what_is_allowed(stack: str, observability: dict[str, Any],
                                                          message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_environment(raw_config(stack, **observability))
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


# --- alert rules' schedule arithmetic -----------------------------------------------------------------


@pytest.mark.parametrize(("schedule", "seconds"), [
    ("0 * * * *", 3600), ("*/15 * * * *", 900), ("@daily", 86400), ("@hourly", 3600),
    ("0 6 * * 1-5", 3 * 86400),  # Friday 06:00 -> Monday 06:00
    ("30 2 1 * *", 31 * 86400), ("0 0,12 * * *", 43200), ("5,50 * * * *", 45 * 60), ("5/20 * * * *", 20 * 60),
    ("0 0 1 * mon", 7 * 86400),  # both day fields: the 1st OR a Monday
])
def test_cron_period(schedule: str, seconds: int) -> None:
    assert cron_period_seconds(schedule) == seconds


def test_monitoring_alert_waits_two_of_the_stacks_periods(rendered: dict[str, RenderResult]) -> None:
    groups = named(rendered["ci"], "PrometheusRule", "mlops-alerts")["spec"]["groups"]
    [not_run] = [r for g in groups for r in g["rules"] if r["alert"] == "MlopsMonitoringNotRun"]
    assert not_run["expr"].endswith("> 3600")  # ci: every 30 minutes
    assert 'mlops_endpoint="churn"' in not_run["expr"] and 'namespace="mlops-ci"' in not_run["expr"]


# --- the PNGs in docs -----------------------------------------------------------------------------------


def load_renderer() -> Any:
    spec = importlib.util.spec_from_file_location("render_dashboards", ROOT / "scripts" / "render_dashboards.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("stem", sorted(SOURCES))
def test_docs_have_a_current_png_of_each_dashboard(stem: str) -> None:
    from PIL import Image

    png = ROOT / "docs" / "observability" / f"{stem}.png"
    assert png.exists(), "run .venv/bin/python scripts/render_dashboards.py"
    source = (obs.DASHBOARD_DIR / f"{stem}.json").read_bytes()
    assert Image.open(png).info.get("Source") == hashlib.sha256(source).hexdigest(), \
        f"{png.name} is older than {stem}.json: run .venv/bin/python scripts/render_dashboards.py"


def test_the_renderer_draws_every_panel(tmp_path: Path) -> None:
    renderer = load_renderer()
    out = tmp_path / "jobs.png"
    drawn = renderer.render_dashboard(SOURCES["jobs"], out, source_hash="x")
    assert drawn == len(SOURCES["jobs"]["panels"]) and out.stat().st_size > 10_000
