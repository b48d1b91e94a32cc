"""`mlops promote` between two real local stacks (moto S3 + mlflow server each): no mocks.

Tests run in file order on module fixtures: v1 is promoted into the empty target first (it
becomes champion there), a failure is injected while promoting v2, then v2 goes through a
bundle and meets the target's gate; the report reads what all of that recorded.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.lifecycle.conftest import Source
from workloads.cli import app
from workloads.data import dataset
from workloads.data.sample import generate
from workloads.environment import Environment
from workloads.lifecycle.promote import promote, retarget
from workloads.lifecycle.regate import PromotionError
from workloads.settings import PromoteSettings
from workloads.training import registry

pytestmark = pytest.mark.servers
LINEAGE = ("mlops.dataset.name", "mlops.dataset.digest", "mlops.spec.hash", "mlops.git.commit", "mlops.git.dirty",
           "mlops.target", "mlops.task", "mlops.metric", "mlops.metric.value", "mlops.split.seed",
           "mlops.split.holdout_fraction", "mlops.predict")


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


def model_files(env: Environment, name: str, version: str) -> tuple[dict[str, str], str]:
    """sha256 of every stored artifact of the version's model (from its logged model's location), and its MLmodel."""
    client = env.mlflow_client()
    source = client.get_model_version(name, version).source
    location = client.get_logged_model(source.removeprefix("models:/")).artifact_location
    with env.tracking(), tempfile.TemporaryDirectory() as tmp:
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=tmp))
        return hashes(root), (root / "MLmodel").read_text()


def run_files(env: Environment, run_id: str) -> dict[str, str]:
    with env.tracking(), tempfile.TemporaryDirectory() as tmp:
        return hashes(Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="", dst_path=tmp)))


def runs(env: Environment, name: str) -> list[Any]:
    client = env.mlflow_client()
    experiment = client.get_experiment_by_name(name)
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def versions(env: Environment, name: str) -> list[str]:
    return sorted(mv.version for mv in env.mlflow_client().search_model_versions(f"name='{name}'"))


@pytest.fixture(scope="module")
def first(source: Source, target: Environment, local_workdir: Path) -> dict[str, Any]:
    """v1 promoted by the CLI into the empty target."""
    result = cli("promote", source.name, "--from-workdir", str(local_workdir), "--to-workdir",
                 str(target.workdir), "--json")
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def test_promotion_copies_the_version_byte_for_byte_with_its_lineage(first: dict, source: Source,
                                                                     target: Environment) -> None:
    name, src = source.name, source.env.mlflow_client()
    assert (first["created"], first["version"], first["decision"]) == (True, "1", "champion")
    assert first["promoted_from"] == f"local/{name}/1" and "no champion in local yet" in first["reason"]

    (copied, mlmodel), (original_files, original_mlmodel) = model_files(target, name, "1"), model_files(source.env, name, "1")
    assert {"MLmodel", "model.skops", "input_example.json", "serving_input_example.json"} <= set(copied)
    assert {k: v for k, v in copied.items() if k != "MLmodel"} == {k: v for k, v in original_files.items() if k != "MLmodel"}
    # MLmodel differs in exactly the two lines naming the logged model and the run that hold it.
    target_model = target.mlflow_client().get_model_version(name, "1").source.removeprefix("models:/")
    assert mlmodel == retarget(original_mlmodel, target_model, first["run_id"]) != original_mlmodel
    assert f"model_id: {target_model}\n" in mlmodel and f"run_id: {first['run_id']}\n" in mlmodel
    original = run_files(source.env, source.good.run_id)
    assert {k: v for k, v in run_files(target, first["run_id"]).items() if k in original} == original
    with target.tracking():
        info = mlflow.models.get_model_info(f"models:/{name}@champion")
    with source.env.tracking():
        assert info.signature == mlflow.models.get_model_info(f"models:/{name}/1").signature
    assert info.saved_input_example_info is not None

    mine, theirs = target.mlflow_client().get_model_version(name, "1"), src.get_model_version(name, "1")
    assert {k: mine.tags[k] for k in LINEAGE} == {k: theirs.tags[k] for k in LINEAGE}
    assert mine.tags["mlops.promoted_from"] == f"local/{name}/1"
    assert mine.tags["mlops.promoted_from.run_id"] == source.good.run_id
    assert mine.tags["mlops.promoted_by_run"] == mine.run_id == first["run_id"] == mine.tags["mlops.run_id"]
    assert datetime.fromisoformat(mine.tags["mlops.promoted_at"])
    assert mine.tags["mlops.promoted_from.dataset_uri"] == theirs.tags["mlops.dataset.uri"]

    run, origin = target.mlflow_client().get_run(mine.run_id), src.get_run(source.good.run_id)
    assert run.info.status == "FINISHED" and run.data.params == origin.data.params
    assert {k: v for k, v in run.data.metrics.items() if k.startswith(("holdout.", "cv."))} == \
        {k: v for k, v in origin.data.metrics.items() if k.startswith(("holdout.", "cv."))}
    (given,) = run.inputs.dataset_inputs
    assert given.dataset.digest == source.good.dataset_digest


def test_the_dataset_version_is_copied_under_its_digest_and_the_model_serves(first: dict, source: Source,
                                                                             target: Environment) -> None:
    uri = target.mlflow_client().get_model_version(source.name, "1").tags["mlops.dataset.uri"]
    assert uri == first["dataset_uri"] and uri.startswith(f"s3://{target.outputs.data_bucket}/")
    assert dataset.digest(dataset.load(uri, target)) == source.good.dataset_digest
    rows = generate(20, 99).drop(columns=["churned"])
    with target.tracking():
        here = mlflow.pyfunc.load_model(f"models:/{source.name}@champion").predict(rows)
    with source.env.tracking():
        there = mlflow.pyfunc.load_model(f"models:/{source.name}/1").predict(rows)
    assert list(pd.Series(here)) == list(pd.Series(there))


def test_promoting_the_same_version_again_creates_nothing(first: dict, source: Source, target: Environment) -> None:
    before = (versions(target, source.name), len(runs(target, source.name)))
    again = promote(PromoteSettings(model=source.name, version=1), source.env, target)
    assert (again.created, again.version, again.run_id) == (False, "1", first["run_id"])
    assert (versions(target, source.name), len(runs(target, source.name))) == before


def test_a_failure_midway_leaves_nothing_half_registered(first: dict, source: Source, target: Environment,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any) -> None:
        raise RuntimeError("injected: the registry went away while aliasing")

    monkeypatch.setattr(registry, "set_alias", fail)  # the last step of registration
    with pytest.raises(PromotionError, match="injected") as raised:
        promote(PromoteSettings(model=source.name, version=2, copy_dataset=False), source.env, target)
    assert raised.value.exit_code == 1
    assert versions(target, source.name) == ["1"]
    client = target.mlflow_client()
    assert client.get_model_version_by_alias(source.name, "champion").version == "1"
    states = {r.info.run_id: (r.info.status, r.data.tags.get("mlops.promotion.state")) for r in runs(target, source.name)}
    assert "RUNNING" not in {status for status, _ in states.values()}
    (failed,) = [run_id for run_id, (status, _) in states.items() if status == "FAILED"]
    assert states[failed][1] == "failed"
    experiment = client.get_experiment_by_name(source.name).experiment_id
    models = client.search_logged_models([experiment])
    assert all(m.source_run_id != failed for m in models)  # its logged model was deleted


@pytest.fixture(scope="module")
def v2_bundle(source: Source, local_workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v2 exported by one command (the source's half of what deploy.yml does), its dataset only referenced."""
    bundle = tmp_path_factory.mktemp("bundle") / "v2"
    out = cli("promote", source.name, "--version", "2", "--no-copy-dataset", "--from-workdir", str(local_workdir),
              "--to-bundle", str(bundle))
    assert out.exit_code == 0, out.output
    assert (bundle / "promotion.json").is_file() and (bundle / "model" / "MLmodel").is_file()
    assert not (bundle / "dataset").exists()
    return bundle


@pytest.fixture(scope="module")
def second(first: dict, v2_bundle: Path, source: Source, target: Environment) -> dict[str, Any]:
    """v2 imported from the bundle by another command (the target's half)."""
    result = cli("promote", source.name, "--from-bundle", str(v2_bundle), "--to-workdir", str(target.workdir), "--json")
    assert result.exit_code == 0, result.output
    return dict(json.loads(result.stdout))


def test_the_targets_gate_judges_on_the_targets_data(second: dict, source: Source, target: Environment) -> None:
    # v2's first attempt failed after registering (and deleting) target v2: MLflow never reuses a number.
    assert (second["created"], second["version"], second["decision"]) == (True, "3", "challenger")
    gate = second["gate"]
    champion = target.mlflow_client().get_model_version_by_alias(source.name, "champion")
    assert champion.version == "1" and gate["champion_version"] == "1"
    # The target's champion scored on its own holdout rows in the target: exactly its recorded metric.
    assert gate["holdout"]["rows"] == 120  # 600 rows, holdout_fraction 0.2
    assert gate["holdout"]["champion"] == pytest.approx(float(champion.tags["mlops.metric.value"]), abs=1e-12)
    assert gate["holdout"]["challenger"] < gate["holdout"]["champion"]
    assert "on local's data" in second["reason"]
    assert target.mlflow_client().get_model_version_by_alias(source.name, "challenger").version == "3"
    tags = target.mlflow_client().get_model_version(source.name, "3").tags
    assert tags["mlops.gate.holdout.champion"] == str(gate["holdout"]["champion"])
    assert tags["mlops.promotion.chain"] == f"local/{source.name}/2"
    # --no-copy-dataset: the version names the source's dataset version; the target's bucket has no copy.
    assert second["dataset_uri"] == tags["mlops.dataset.uri"] == source.bad.dataset_uri
    with pytest.raises(dataset.DataError, match="no such object"):
        dataset.load(source.bad.dataset_uri, target)


def test_the_bundle_path_and_the_direct_path_agree_on_what_was_promoted(second: dict, v2_bundle: Path,
                                                                        source: Source, target: Environment) -> None:
    again = promote(PromoteSettings(model=source.name, alias="challenger"), source.env, target)
    assert (again.created, again.version) == (False, "3")
    other = cli("promote", source.name, "--version", "1", "--from-bundle", str(v2_bundle), "--to-workdir",
                str(target.workdir))
    assert other.exit_code == 2 and f"holds {source.name} v2" in other.output


def test_options_are_checked_before_anything_is_copied(source: Source, local_workdir: Path, tmp_path: Path) -> None:
    same = cli("promote", source.name, "--from-workdir", str(local_workdir), "--to-workdir", str(local_workdir))
    assert same.exit_code == 2 and "same environment" in same.output
    both = cli("promote", source.name, "--from", "dev", "--from-workdir", str(local_workdir))
    assert both.exit_code == 2 and "--from and --from-workdir: give one" in both.output
    missing = cli("promote", source.name, "--version", "99", "--from-workdir", str(local_workdir), "--to-bundle",
                  str(tmp_path / "b"))
    assert missing.exit_code == 2 and "has no version 99" in missing.output
    (tmp_path / "empty").mkdir()
    not_bundle = cli("promote", source.name, "--from-bundle", str(tmp_path / "empty"), "--to-workdir",
                     str(local_workdir))
    assert not_bundle.exit_code == 2 and "not a promotion bundle" in not_bundle.output
    assert cli("--check", "promote", source.name, "--version", "1", "--alias", "champion").exit_code == 2


def test_the_report_answers_why_a_version_is_where_it_is(first: dict, second: dict, source: Source,
                                                         target: Environment, tmp_path: Path) -> None:
    from workloads.monitoring.monitor import monitor
    from workloads.settings import MonitorSettings

    # A real monitoring pass in the target; nothing was captured yet, so it finds too little data.
    watched = monitor(MonitorSettings(endpoint=source.name, model=source.name, retrain=False), target)
    assert watched.status == "insufficient_data"
    page = tmp_path / "report.html"
    result = cli("model", "report", source.name, "1", "--workdir", str(target.workdir), "--json", "--html", str(page))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)

    assert [(g["kind"], g["environment"], g["version"]) for g in report["gates"]] == [
        ("training", "local", "1"), ("promotion", "local", "1"), ("challenged by v3", "local", "3")]
    trained, promoted, challenged = (g["report"] for g in report["gates"])
    assert trained["holdout"]["challenger"] == pytest.approx(source.good.metric_value)
    assert promoted["decision"] == "champion" and "no champion in local yet" in promoted["reason"]
    assert challenged["holdout"] == second["gate"]["holdout"] and challenged["decision"] == "challenger"
    (promotion,) = report["promotions"]
    assert (promotion["source"], promotion["source_run_id"], promotion["run_id"]) == (
        f"local/{source.name}/1", source.good.run_id, first["run_id"])
    assert promotion["at"] and promotion["by"]
    (seen,) = report["monitoring"]
    assert (seen["run_id"], seen["status"], seen["endpoint"], seen["alias"]) == (
        watched.run_id, "insufficient_data", source.name, "champion")

    assert report["dataset"]["digest"] == source.good.dataset_digest and report["dataset"]["schema"]["columns"]
    assert report["dataset"]["uri"] == first["dataset_uri"]
    assert report["code"]["commit"] == source.env.mlflow_client().get_model_version(source.name, "1").tags[
        "mlops.git.commit"]
    assert f"name: {source.name}" in report["spec"]["yaml"] and report["search"][0]["family"] == "logistic_regression"
    assert report["metrics"]["holdout.roc_auc"] == pytest.approx(source.good.metric_value)
    assert report["served"]["aliases_now"] == ["champion"]
    assert any("1 monitoring run(s)" in e["what"] for e in report["served"]["events"])
    assert any("no alias history" in m for m in report["served"]["missing"])

    html = page.read_text()
    assert "challenged by v3" in html and f"{challenged['holdout']['champion']:.4f}" in html
    assert f"local/{source.name}/1" in html and watched.run_id not in html  # runs are summarised, not linked
    logged = {a.path for a in target.mlflow_client().list_artifacts(first["run_id"])}
    assert {"report.html", "report.json"} <= logged
    missing = cli("model", "report", source.name, "9", "--workdir", str(target.workdir))
    assert missing.exit_code == 2 and "has no version 9" in missing.output
