"""MLflow conventions: one experiment per config, a parent run per search, a child run per trial.

Everything goes through an explicit :class:`mlflow.MlflowClient` (no fluent active-run state),
so trials running side by side in one Ray worker process cannot log into each other's runs.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from mlflow import MlflowClient

PARENT_RUN_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
TRIAL_TAG = "learn2tune.trial_id"
ROLE_TAG = "learn2tune.role"
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000  # MLflow's limit on a tag value
SERVER_TIMEOUT_S = 5.0
DATASET_REPORT_ARTIFACT = "dataset_report.json"
DEFAULT_URI = "sqlite:///mlflow.db"  # a local store in the working directory: the registry works with no server
PROBE_ENDPOINT = "/api/2.0/mlflow/experiments/search"  # the API itself: /health skips the Host check


def resolve_uri(given: str | None, environ: Mapping[str, str], cwd: Path) -> str:
    """The tracking URI to use: ``given``, else ``MLFLOW_TRACKING_URI``, else :data:`DEFAULT_URI`; a
    relative SQLite or file path made absolute against ``cwd``, since trials run in other directories."""
    uri = given or environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///"):
        return "sqlite:///" + str(cwd / Path(uri.removeprefix("sqlite:///")).expanduser())
    if "://" not in uri:
        return str(cwd / Path(uri).expanduser())
    return uri


def make_client(uri: str) -> MlflowClient:
    """A client for the tracking store at ``uri`` (the registry lives in the same store), after
    :func:`check_server` has seen a tracking server there answer."""
    from mlflow import MlflowClient

    check_server(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def process_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's process-wide tracking URI set to ``uri`` for the block, then back to what it
    resolved from before (``MLFLOW_TRACKING_URI``, else MLflow's default).

    For the one call that needs it: MLflow 3.17's SQL registry store resolves a model version's
    ``models:/<model_id>`` source with ``MlflowClient()``, the process-wide URI, whatever the
    client it was called through says. A tracking server resolves it with its own store.
    """
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # type: ignore[arg-type]  # None unsets it, as MLflow itself does


def is_server(uri: str) -> bool:
    """Whether ``uri`` is a tracking server (HTTP) rather than a local store (SQLite, files)."""
    return uri.startswith(("http://", "https://"))


def check_server(uri: str) -> None:
    """For a tracking server, one API call with MLflow's own credentials (``MLFLOW_TRACKING_TOKEN``,
    ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``, TLS settings) and no retries; a one-line error
    naming ``uri`` and the status unless it answers 200. MLflow's client would otherwise retry
    an unreachable server for minutes before a long traceback."""
    if not is_server(uri):
        return
    from mlflow.exceptions import MlflowException
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    where = f"the MLflow tracking server at {uri} (tracking.uri / MLFLOW_TRACKING_URI)"
    try:
        response = http_request(
            get_default_host_creds(uri), PROBE_ENDPOINT, "GET",
            max_retries=0, timeout=SERVER_TIMEOUT_S, raise_on_status=False, params={"max_results": 1},
        )  # fmt: skip
    except MlflowException as exc:
        raise PipelineError(f"cannot reach {where}: {_connection_reason(exc)}") from None
    status = response.status_code
    if status == 200:
        return
    answer = f"{where} answered {status} {response.reason}"
    if status == 401:
        raise PipelineError(f"{answer}: set MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD")
    if status == 403:
        body = response.text.strip().splitlines()[0][:200] if response.text.strip() else "no reason given"
        raise PipelineError(
            f"{answer} ({body}): the server refuses this client; if it names the Host header, start "
            "the server with --allowed-hosts listing the host name in the URI, else check its permissions"
        )
    raise PipelineError(f"{answer}; is it an MLflow tracking server (the URI without /api/... paths)?")


def _connection_reason(error: BaseException) -> str:
    """Why a request failed, from the innermost cause (``connection refused``, a timeout, DNS)."""
    import requests

    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, requests.exceptions.Timeout):
            return f"no answer within {SERVER_TIMEOUT_S:g} s"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()
        cause = cause.__cause__ or cause.__context__
    return str(error).splitlines()[0]


def artifact_root(uri: str) -> Path | None:
    """Where artifacts go for a local SQLite store (``mlartifacts`` beside the database)."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts"
    return None


def ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The id of MLflow experiment ``name``, created (artifacts beside a SQLite store, tagged as a machine
    learning experiment) if missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise PipelineError(
                f"MLflow experiment {name!r} is deleted; restore it in the MLflow UI or set tracking.experiment"
            )
        return experiment.experiment_id
    from pipeline.ui import EXPERIMENT_TAGS

    root = artifact_root(uri)
    location = (root / name).as_uri() if root is not None else None
    return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)


def check_registered_model(client: MlflowClient, name: str, uri: str) -> None:
    """PipelineError unless the registry at ``uri`` holds a model named ``name``."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        raise PipelineError(
            f"no registered model {name!r} in {uri}; run `learn2tune register` first "
            "(registry.model_name / --name picks the model)"
        ) from None


def start_run(
    client: MlflowClient,
    experiment_id: str,
    name: str,
    tags: Mapping[str, str],
    parent_run_id: str | None = None,
) -> str:
    """A new RUNNING run; nested under ``parent_run_id`` when given."""
    all_tags = dict(tags)
    if parent_run_id is not None:
        all_tags[PARENT_RUN_TAG] = parent_run_id
    return client.create_run(experiment_id, tags=all_tags, run_name=name).info.run_id


def trial_run(
    client: MlflowClient, experiment_id: str, parent_run_id: str, trial_id: str, name: str
) -> tuple[str, bool]:
    """The child run of trial ``trial_id`` and whether it is new (a restarted trial reuses its run)."""
    run = find_trial_run(client, experiment_id, parent_run_id, trial_id)
    if run is not None:
        client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id, False
    tags = {TRIAL_TAG: trial_id, ROLE_TAG: "trial"}
    return start_run(client, experiment_id, name, tags, parent_run_id), True


def find_trial_run(client: MlflowClient, experiment_id: str, parent_run_id: str, trial_id: str) -> Any:
    """The child run of ``parent_run_id`` for trial ``trial_id``, or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}' and tags.`{TRIAL_TAG}` = '{trial_id}'",
        max_results=1,
    )
    return runs[0] if runs else None


def child_runs(client: MlflowClient, experiment_id: str, parent_run_id: str) -> dict[str, Any]:
    """Trial id -> child run of ``parent_run_id``."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'", max_results=10000
    )
    return {run.data.tags[TRIAL_TAG]: run for run in runs if TRIAL_TAG in run.data.tags}


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in params.items()]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, str]) -> None:
    """Set ``tags`` on the run in one request (values cut to MLflow's limit)."""
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(key, str(value)[:MAX_TAG_LENGTH]) for key, value in tags.items()])


def log_metrics(client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log the finite numeric entries of ``metrics`` at ``step``, to 7 significant digits (float32's, what
    the learners compute in), so the UI shows 0.6656 rather than a float64 sum's 0.66559999999."""
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [
        Metric(key, float(f"{value:.7g}"), now, step)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ]
    client.log_batch(run_id, metrics=items)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b": value}``; lists and tuples as comma-joined strings."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = ",".join(map(str, value))
        else:
            flat[name] = value
    return flat


def log_dataset_report(client: MlflowClient, run_id: str, manifest: Mapping[str, Any]) -> None:
    """The dataset's build report (files read and skipped, shape, channels, conversions) as an
    artifact of ``run_id``; datasets built before reports existed have none to log."""
    report = manifest.get("report")
    if report:
        client.log_dict(run_id, {"fingerprint": manifest["fingerprint"], **report}, DATASET_REPORT_ARTIFACT)
