"""What the stacks render for serving's trust boundary: the public Ingress carries only scoring and
readiness, with a rate limit and API keys the app checks; every endpoint has a reload token; the
hostile-input bounds and the pickle switch reach `mlops serve` from the stack keys."""

from __future__ import annotations

import pytest

from components.render import RenderResult, load_stack_config, render_stack, stack_file
from tests.infra.conftest import ADMIN_PASSWORD
from tests.infra.helpers import env_of, manifest, manifests, pod_spec
from workloads.serving.auth import API_KEYS_ENV, RELOAD_TOKEN_ENV

NGINX = "nginx.ingress.kubernetes.io"


@pytest.fixture(scope="module")
def renders() -> dict[str, RenderResult]:
    return {s: render_stack(s, secrets={"trackingAdminPassword": ADMIN_PASSWORD}) for s in ("prod", "local")}


def serve_container(result: RenderResult) -> dict:
    return pod_spec(manifest(result, "Deployment", "serve-churn"))["containers"][0]


def test_public_ingress_carries_only_scoring_and_readiness(renders: dict[str, RenderResult]) -> None:
    ingress = manifest(renders["prod"], "Ingress", "serve-churn")
    (rule,) = ingress["spec"]["rules"]
    paths = {(p["path"], p["pathType"]) for p in rule["http"]["paths"]}
    assert paths == {("/invocations", "Exact"), ("/ping", "Exact")}  # no /reload, /metrics, /version, no "/"
    assert ingress["spec"]["tls"][0]["hosts"] == [rule["host"]]
    notes = ingress["metadata"]["annotations"]
    assert int(notes[f"{NGINX}/limit-rps"]) >= 1 and int(notes[f"{NGINX}/limit-connections"]) >= 1
    assert notes[f"{NGINX}/proxy-body-size"] == "16777216"  # what the app accepts, not nginx's 1m default
    assert notes[f"{NGINX}/ssl-redirect"] == "true"


def test_public_endpoint_requires_api_keys_from_its_secret(renders: dict[str, RenderResult]) -> None:
    for stack, public in (("prod", True), ("local", False)):
        env = env_of(serve_container(renders[stack]))
        secret = manifest(renders[stack], "Secret", "serve-churn-auth")
        assert env[RELOAD_TOKEN_ENV] == {"secretKeyRef": {"name": "serve-churn-auth", "key": "reload-token"}}
        assert secret["stringData"]["reload-token"]
        if public:
            assert env[API_KEYS_ENV] == {"secretKeyRef": {"name": "serve-churn-auth", "key": "api-keys"}}
            assert secret["stringData"]["api-keys"]
        else:
            assert API_KEYS_ENV not in env and "api-keys" not in secret["stringData"]
        assert not [a for a in serve_container(renders[stack])["args"] if "token" in a or "key" in a.lower()]


def test_no_ingress_without_a_host(renders: dict[str, RenderResult]) -> None:
    assert not [m for m in manifests(renders["local"], "Ingress") if m["metadata"]["name"].startswith("serve-")]


def test_bounds_and_the_pickle_switch_travel_from_the_stack() -> None:
    config = load_stack_config(stack_file("local"))
    endpoint = config["mlops-platform:serving"]["endpoints"][0]
    endpoint.update({"maxRequestRows": 500, "maxBodyBytes": 1_000_000, "maxDecodedBytes": 2_000_000,
                     "maxConcurrentRequests": 8, "pickleAllowed": True, "host": "churn.local.example.com",
                     "rateLimitRps": 7})
    result = render_stack("local", config=config, secrets={"trackingAdminPassword": ADMIN_PASSWORD})
    args = serve_container(result)["args"]
    pairs = dict(zip(args[::1], args[1::1], strict=False))
    assert (pairs["--max-request-rows"], pairs["--max-body-bytes"], pairs["--max-decoded-bytes"],
            pairs["--max-concurrent-requests"]) == ("500", "1000000", "2000000", "8")
    assert "--pickle-allowed" in args and "--no-pickle-allowed" not in args
    notes = manifest(result, "Ingress", "serve-churn")["metadata"]["annotations"]
    assert (notes[f"{NGINX}/limit-rps"], notes[f"{NGINX}/proxy-body-size"]) == ("7", "1000000")


def test_pods_are_annotated_for_scraping_without_an_operator(renders: dict[str, RenderResult]) -> None:
    notes = manifest(renders["local"], "Deployment", "serve-churn")["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/port"] == "8080"
