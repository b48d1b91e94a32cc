"""Training jobs: a YAML spec in, a tracked, registered model version out, promoted only when it wins.

Three jobs share the same steps; none calls another:
- `train`: prepare -> search -> fit and log -> gate -> register, in one MLflow run;
- `search_shard` (one of N pods): prepare -> search its share of the candidates -> log them;
- `select`: prepare -> gather the shards' candidates -> fit and log -> gate -> register.

The steps:
1. prepare (prepare.py): read, validate and split the data; nothing is logged when it fails;
2. store it once by content digest (its schema too, the first time), then open the run with
   the dataset, the spec, the schema and the lineage tags (lineage.py);
3. search (search.py): cross-validate the candidates on the training split, all cores, one
   nested run each; or take the shards' candidates (shards.py);
4. fit the best on the training split, score the holdout, log the model and permutation importance;
5. gate (gate.py): score the current `champion` on the same holdout and decide;
6. register last (registry.py) with the lineage tags and alias `champion` or `challenger`; a
   failure while registering deletes the version again: a failed job leaves no version behind.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pandas as pd

from workloads.data import dataset
from workloads.data.dataset import DatasetVersion
from workloads.environment import Environment
from workloads.errors import MlopsError, ServiceUnavailable
from workloads.settings import TrainSettings
from workloads.training.errors import SpecError
from workloads.training.gate import GateReport, current_champion, judge
from workloads.training.lineage import code_tags, data_tags
from workloads.training.metrics import score_all, scorer
from workloads.training.models import build_pipeline, make_estimator
from workloads.training.prepare import Prepared, prepare
from workloads.training.probabilities import served
from workloads.training.registry import register
from workloads.training.report import Bar, ShardResult, TrainResult, log_importance, permutation_importance
from workloads.training.search import (
    Candidate,
    Planned,
    best_first,
    evaluate,
    plan_candidates,
    shard_candidates,
)
from workloads.training.shards import (
    DIGEST_TAG,
    GROUP_TAG,
    SHARD_TAG,
    SHARDS_TAG,
    SPEC_HASH_TAG,
    default_group,
    gather_candidates,
    wait_for_shards,
)
from workloads.training.spec import TrainingSpec, format_uri, widened_for
from workloads.training.tracking import (
    CANDIDATES_ARTIFACT,
    experiment_id,
    log_candidates,
    log_inputs,
    log_model,
    tracked,
)


@dataclass(frozen=True)
class Job:
    """A job's state once its data is prepared and stored: what every later step reads."""

    spec: TrainingSpec
    client: Any  # MlflowClient for the job's environment
    prep: Prepared
    dataset: DatasetVersion
    lineage: dict[str, str]
    experiment_id: str
    started: float


@dataclass(frozen=True)
class Fitted:
    """The best candidate refitted on the training split, scored on the holdout, logged."""

    best: Candidate
    model: Any  # the fitted pipeline
    holdout: dict[str, float]
    value: float  # the spec's metric on the holdout
    model_uri: str
    model_id: str | None


# --- the jobs -------------------------------------------------------------------------------


def train(spec: TrainingSpec, env: Environment, *, data: pd.DataFrame | None = None,
          progress: bool = True) -> TrainResult:
    """Run one training job in `env`; see the module docstring. `data` overrides the spec's source."""
    started = time.monotonic()
    with tracked(env), Bar(progress) as bar:
        client = env.mlflow_client()
        job = _stored(spec, env, client, _announced(prepare(spec, env, data), bar), started)
        with _run(job) as run_id:
            candidates = _search(job, run_id, bar)
            return _conclude(job, run_id, candidates, bar)


def search_shard(
    spec: TrainingSpec, env: Environment, shard: int, shards: int, *,
    group: str | None = None, data: pd.DataFrame | None = None, progress: bool = True,
) -> ShardResult:
    """Cross-validate this shard's candidates (training split only) and log them as runs; no registration."""
    import mlflow

    started = time.monotonic()
    with tracked(env), Bar(progress) as bar:
        prep = _announced(prepare(spec, env, data), bar)
        mine = shard_candidates(plan_candidates(spec, prep.task), shard, shards)
        group = group or default_group(spec, prep.digest)
        client = env.mlflow_client()
        ids = {GROUP_TAG: group, SHARD_TAG: str(shard)}
        tags = ids | code_tags() | {
            SHARDS_TAG: str(shards), SPEC_HASH_TAG: spec.spec_hash(), "mlops.dataset.name": spec.dataset.name,
            DIGEST_TAG: prep.digest, "mlops.task": prep.task, "mlops.metric": prep.metric.name,
        }
        with mlflow.start_run(experiment_id=experiment_id(client, spec.experiment_name),
                              run_name=f"search-{spec.name}-{shard}of{shards}", tags=tags) as run:
            bar.start(f"shard {shard}/{shards}: {len(mine)} candidates", total=len(mine))
            candidates = _evaluate(spec, prep, mine, bar)
            log_candidates(client, run.info.run_id, run.info.experiment_id, candidates, prep.metric, tags=ids)
            mlflow.log_metric("n_candidates", len(candidates))
            if candidates:
                mlflow.log_metric(f"best.cv.{prep.metric.name}", candidates[0].cv_score)
            # Written last: a FINISHED shard run always has its complete list.
            mlflow.log_dict([c.model_dump() for c in candidates], CANDIDATES_ARTIFACT)
    return ShardResult(
        model_name=spec.name, group=group, shard=shard, shards=shards, n_candidates=len(candidates),
        best=candidates[0] if candidates else None, dataset_digest=prep.digest, run_id=run.info.run_id,
        seconds=round(time.monotonic() - started, 2),
    )


def select(
    spec: TrainingSpec, env: Environment, shards: int, *,
    group: str | None = None, data: pd.DataFrame | None = None, progress: bool = True,
    timeout: float = 3600.0, poll_seconds: float = 10.0,
) -> TrainResult:
    """Wait for every shard of the group, then fit, gate and register the best of their candidates.

    Fails with TrainingError naming the missing shards after `timeout` seconds; nothing is
    registered unless every shard finished with this spec and this data.
    """
    if shards < 1:
        raise SpecError(f"--shards {shards}: must be at least 1")
    started = time.monotonic()
    with tracked(env), Bar(progress) as bar:
        client = env.mlflow_client()
        prep = _announced(prepare(spec, env, data), bar)
        group = group or default_group(spec, prep.digest)
        finished = wait_for_shards(client, spec.experiment_name, group, shards, timeout=timeout,
                                   poll_seconds=poll_seconds)
        candidates = gather_candidates(finished, plan_candidates(spec, prep.task), spec, prep.digest, group)
        job = _stored(spec, env, client, prep, started)
        with _run(job, {GROUP_TAG: group, SHARDS_TAG: str(shards)}) as run_id:
            # searched elsewhere: the shards' runs hold the per-candidate details
            bar.start(f"{len(candidates)} candidates searched", total=len(candidates), completed=len(candidates))
            return _conclude(job, run_id, best_first(candidates, prep.metric), bar)


# --- the steps ------------------------------------------------------------------------------


def _announced(prep: Prepared, bar: Bar) -> Prepared:
    """Says which identifier-like columns were dropped from the features (features.py)."""
    for column, why in prep.dropped.items():
        bar.note(f"dropped feature {column!r}: {why} (exclude it, or set id_columns.action: refuse)")
    return prep


def _stored(spec: TrainingSpec, env: Environment, client: Any, prep: Prepared, started: float) -> Job:
    """Step 2: the validated data stored once by digest (and a new schema), with its lineage."""
    version = dataset.store(prep.df, spec.dataset.name, env, content_digest=prep.digest)
    if prep.schema_is_new:
        dataset.save_schema(spec.dataset.name, prep.schema, env)
    lineage = data_tags(spec, version, prep.task, prep.metric) | code_tags() | {"mlops.predict": spec.predict}
    if prep.target.positive is not None:
        lineage["mlops.positive_class"] = str(prep.target.positive)
    if prep.dropped:
        lineage["mlops.features.dropped"] = ",".join(prep.dropped)
    return Job(spec=spec, client=client, prep=prep, dataset=version, lineage=lineage,
               experiment_id=experiment_id(client, spec.experiment_name), started=started)


@contextmanager
def _run(job: Job, tags: dict[str, str] | None = None) -> Iterator[str]:
    """The job's MLflow run with its inputs and lineage; FAILED if the block raises."""
    import mlflow

    with mlflow.start_run(experiment_id=job.experiment_id, run_name=f"train-{job.spec.name}") as run:
        log_inputs(job.spec, job.prep.df, job.dataset, job.prep.schema.model_dump())
        mlflow.set_tags(job.lineage | (tags or {}))
        yield run.info.run_id


def _evaluate(spec: TrainingSpec, prep: Prepared, planned: list[Planned], bar: Bar) -> list[Candidate]:
    return evaluate(spec, prep.task, prep.metric, prep.n_classes, prep.X_train, prep.y_train, planned,
                    on_family=lambda family, n: bar.advance(n, f"searched {family}"),
                    positive=prep.target.positive, weights=prep.w_train)


def _search(job: Job, run_id: str, bar: Bar) -> list[Candidate]:
    """Step 3: every candidate of the spec, cross-validated and logged as nested runs; best first."""
    planned = plan_candidates(job.spec, job.prep.task)
    families = len(job.spec.models)
    bar.start(f"searching {families} famil{'y' if families == 1 else 'ies'}", total=len(planned))
    candidates = _evaluate(job.spec, job.prep, planned, bar)
    log_candidates(job.client, run_id, job.experiment_id, candidates, job.prep.metric)
    return candidates


def _fit_and_log(job: Job, best: Candidate, bar: Bar) -> Fitted:
    """Step 4: refit the best on the training split, score the holdout, log the model and its importance."""
    import mlflow

    spec, prep = job.spec, job.prep
    bar.step(f"fitting {best.family} on {len(prep.X_train)} rows")
    model = build_pipeline(prep.X_train, make_estimator(best.family, prep.task, spec.seed))
    model.set_params(**{f"model__{k}": v for k, v in best.params.items()})
    model.fit(prep.X_train, prep.y_train, **({} if prep.w_train is None else {"model__sample_weight": prep.w_train}))
    if spec.positive_class is not None:
        model.positive_class_ = spec.positive_class  # every scorer of this model agrees (metrics.py)
    holdout = score_all(model, prep.X_hold, prep.y_hold, prep.task, prep.n_classes)
    bar.step("permutation importance")
    importance = permutation_importance(model, prep.X_hold, prep.y_hold,
                                        scorer(prep.metric, prep.n_classes, prep.target.positive), spec.seed)
    bar.step("logging the model")
    mlflow.log_params({"best.family": best.family, **{f"best.{k}": v for k, v in best.params.items()},
                       "task": prep.task, "metric": prep.metric.name, "seed": spec.seed, "predict": spec.predict,
                       "n_train": len(prep.X_train), "n_holdout": len(prep.X_hold),
                       "n_recent_holdout": int(prep.recent.sum()),
                       "recent_weight": 1.0 if prep.w_train is None else spec.retraining.recent_weight})
    mlflow.log_metrics({f"holdout.{k}": v for k, v in holdout.items()} | {f"cv.{prep.metric.name}": best.cv_score})
    log_importance(importance, prep.metric.name)
    info = log_model(*served(model, spec.predict), prep.X_train.head(5))
    return Fitted(best=best, model=model, holdout=holdout, value=holdout[prep.metric.name],
                  model_uri=info.model_uri, model_id=info.model_id)


def _gate(job: Job, fitted: Fitted, bar: Bar) -> GateReport:
    """Step 5: the current champion and the new model on rows neither trained on; recorded on the run."""
    import mlflow

    prep = job.prep
    bar.step("scoring the champion")
    champion = current_champion(job.client, job.spec.name, prep.metric)
    report = judge(champion, fitted.model, prep.X_hold, prep.y_hold, prep.recent, prep.metric, prep.n_classes,
                   job.spec.promotion, prep.target.positive)
    mlflow.set_tags(report.tags())
    mlflow.log_metrics(report.metrics())
    return report


def _conclude(job: Job, run_id: str, candidates: list[Candidate], bar: Bar) -> TrainResult:
    """Steps 4 to 6 on candidates searched here or by shards (best first)."""
    import mlflow

    spec, prep = job.spec, job.prep
    mlflow.log_dict([c.model_dump() for c in candidates], CANDIDATES_ARTIFACT)
    fitted = _fit_and_log(job, candidates[0], bar)
    gate = _gate(job, fitted, bar)
    decision = gate.decision
    bar.step(f"registering as {decision}")
    tags = job.lineage | gate.tags() | {"mlops.metric.value": repr(fitted.value), "mlops.run_id": run_id}
    version = register(job.client, spec.name, fitted.model_uri, fitted.model_id, run_id, tags, decision)
    bar.step(f"{spec.name} v{version}: {decision}")
    deciding = gate.recent or gate.holdout  # the rows the decision was made on
    return TrainResult(
        model_name=spec.name, version=version, decision=decision, reason=gate.reason, metric=prep.metric.name,
        metric_value=fitted.value, holdout_metrics=fitted.holdout, champion_version_before=gate.champion_version,
        champion_metric_before=deciding.champion, gate=gate, dropped_columns=prep.dropped,
        dataset_name=spec.dataset.name, dataset_digest=job.dataset.digest,
        dataset_uri=job.dataset.uri, dataset_uploaded=job.dataset.uploaded, task=prep.task,
        best_family=fitted.best.family, best_params=fitted.best.params, n_candidates=len(candidates),
        run_id=run_id, experiment_id=job.experiment_id, seconds=round(time.monotonic() - job.started, 2),
    )


# --- the command ----------------------------------------------------------------------------


def run(settings: TrainSettings, env: Environment, *, progress: bool = True) -> TrainResult | ShardResult:
    """What `mlops train` runs: one training, a search shard or the selection step, per the settings."""
    spec = TrainingSpec.from_yaml(settings.spec)
    try:
        data = dataset.load(format_uri(settings.data, env.outputs, "--data"), env) if settings.data else None
        if settings.retraining and data is not None:
            spec, _ = widened_for(spec, data, env)
        if settings.shard is not None:
            return search_shard(spec, env, settings.shard, settings.shards, group=settings.group, data=data,
                                progress=progress)
        if settings.select:
            return select(spec, env, settings.shards, group=settings.group, data=data, progress=progress,
                          timeout=settings.wait_timeout)
        return train(spec, env, data=data, progress=progress)
    except MlopsError:
        raise
    except Exception as exc:  # a server went away mid-run: one line, not a traceback wall
        from mlflow.exceptions import MlflowException

        if not isinstance(exc, MlflowException | OSError) and "botocore" not in type(exc).__module__:
            raise
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ServiceUnavailable(f"training failed, nothing registered: {type(exc).__name__} talking to "
                                 f"{env.tracking_uri} or its artifact store: {first_line}") from None
