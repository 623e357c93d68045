"""The register stage: the evaluated winner as an MLflow pyfunc model version, alias ``candidate``.

Reads ``evaluation.json`` and the winner's checkpoint (downloaded first from an object store);
logs the model (:mod:`deploy.model_format` owns its format) as an MLflow 3 logged model of the
winning trial's run, registers the version from it (source ``models:/<model_id>``) as
``registry.model_name`` and tags the version with what it is and how it scored
(:class:`pipeline.records.VersionTags`) and what it costs to serve: parameters, weights size and
in-process latency on a standard request (:mod:`pipeline.model_cost`). Only an explicit MlflowClient is used (no fluent
tracking-URI state).
"""

from __future__ import annotations

from learners.checkpoint import SPEC_FILE, WEIGHTS_FILE
from pipeline import tracking
from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.evaluate import read_evaluation
from pipeline.model_cost import measure_model, test_split
from pipeline.records import RegisteredVersion, VersionTags
from pipeline.registered import check_not_registered
from tasks import storage
from tasks.say import Say as Out

ALIAS = "candidate"
MODEL_NAME = "model"  # the logged model's name on the trial run


def register(config: Config, out: Out) -> RegisteredVersion:
    """Register the evaluation's winner under the ``candidate`` alias; returns the new version."""
    from deploy import model_format

    evaluation = read_evaluation(config)
    winner = evaluation.winning_model()
    location = storage.resolve(winner.checkpoint, config.storage.endpoint_url)
    missing = f"the winner's checkpoint {location} is missing {SPEC_FILE} or {WEIGHTS_FILE}"
    if not location.is_dir():
        raise PipelineError(missing)
    client = tracking.make_client(config.tracking.uri)
    primary = winner.results[evaluation.primary]
    name = config.registry.model_name
    check_not_registered(client, name, winner.run_id, f"{winner.family} trial {winner.trial_id}")

    with storage.local_copy(location, "learn2tune-ckpt-") as checkpoint:  # downloaded when remote
        if not (checkpoint / SPEC_FILE).is_file() or not (checkpoint / WEIGHTS_FILE).is_file():
            raise PipelineError(missing)
        logged = model_format.log_model(client, winner.run_id, checkpoint, MODEL_NAME)
    calls = config.registry.latency_calls
    cost = measure_model(logged.artifact_location, config.tracking.uri, test_split(config), calls)
    tags = VersionTags(
        family=winner.family,
        trial_id=winner.trial_id,
        experiment=evaluation.experiment,
        dataset_fingerprint=evaluation.dataset.fingerprint,
        ways=primary.ways,
        shots=primary.shots,
        test_accuracy=primary.accuracy,
        test_ci95=primary.ci95,
        test_episodes=evaluation.test_episodes.episodes,
        val_accuracy=winner.val_accuracy,
        selection=str(evaluation.selection),
    )
    _ensure_registered_model(client, name)
    version_tags = {**tags.to_tags(), **cost.to_tags()}
    with tracking.process_tracking_uri(config.tracking.uri):  # MLflow resolves the models:/ source with it
        version = client.create_model_version(
            name, f"models:/{logged.model_id}", run_id=winner.run_id, tags=version_tags, model_id=logged.model_id
        ).version
    client.set_registered_model_alias(name, ALIAS, version)
    registered = RegisteredVersion(name, str(version), tags)
    client.set_tag(evaluation.mlflow.parent_run_id, "learn2tune.registered_model", f"{name} version {version} @{ALIAS}")
    out(
        f"registered {winner.family} trial {winner.trial_id} as {name} version {version} "
        f"(alias {ALIAS}; {evaluation.primary} test accuracy {primary.accuracy:.4f} ± {primary.ci95:.4f})"
    )
    out(f"  {cost.describe()} on {cost.machine}")
    return registered


def _ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="A few-shot classifier from learn2tune")
