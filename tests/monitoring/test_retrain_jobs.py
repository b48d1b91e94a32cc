"""In-cluster retraining: the monitor creates the mounted Job manifests through the Jobs API.

A small HTTP server on 127.0.0.1 plays the API server (tests/monitoring/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from workloads.monitoring.retrain_jobs import RetrainJobError, create_jobs, with_data


def test_creates_every_job_in_order_with_the_data(api_server, mounted) -> None:
    url, received, _ = api_server
    jobs, token = mounted
    names = create_jobs(jobs, "s3://capture/monitoring/churn/retrain/run.parquet", token_dir=token, api=url)
    assert names == ["train-churn-retrain-1", "train-churn-select-retrain-2"]
    assert [path for path, _, _ in received] == ["/apis/batch/v1/namespaces/mlops-dev/jobs"] * 2
    assert {auth for _, _, auth in received} == {"Bearer pod-token"}
    for _, body, _ in received:
        args = body["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args == ["train", "/app/specs/churn.yaml", "--data", "s3://capture/monitoring/churn/retrain/run.parquet",
                        "--retraining"]


def test_a_refused_job_is_a_clear_error(api_server, mounted) -> None:
    url, _, status = api_server
    status["code"] = 403
    jobs, token = mounted
    with pytest.raises(RetrainJobError, match="0-train-churn.json failed: HTTP 403"):
        create_jobs(jobs, "s3://x/y", token_dir=token, api=url)


def test_no_manifests_is_an_error(tmp_path: Path, mounted) -> None:
    _, token = mounted
    with pytest.raises(RetrainJobError, match="no retraining Job manifests"):
        create_jobs(tmp_path, "s3://x/y", token_dir=token, api="http://127.0.0.1:9")


def test_with_data_leaves_the_mounted_manifest_alone(job_manifest: dict) -> None:
    job = with_data(job_manifest, "s3://b/k")
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][-3:] == ["--data", "s3://b/k", "--retraining"]
    assert job_manifest["spec"]["template"]["spec"]["containers"][0]["args"] == ["train", "/app/specs/churn.yaml"]

