"""How a user opens the MLflow UI on a config's tracking store, and the link that lands on its runs table.

MLflow 3.17's UI opens every experiment on its GenAI view (traces, tokens) unless the browser's
workflow switch says "Model training": the switch is the ``workflowType`` query parameter (or the
sidebar's toggle, which the browser remembers). The experiment tag ``mlflow.experimentKind`` is
MLflow's own record of what an experiment holds; learn2tune sets it when it creates one.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import Config

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_TAGS = {EXPERIMENT_KIND_TAG: "custom_model_development"}  # "Machine learning" in MLflow's UI
RUNS_VIEW = "workflowType=machine_learning"  # the UI's "Model training" switch, as a query parameter


def ui_hint(config: Config, port: int = 5000) -> str:
    """How to open the MLflow UI on the experiment's runs table: a tracking server serves it at its own
    URL (``mlflow ui`` cannot open an HTTP store); a local store needs ``mlflow ui``, then the link."""
    from pipeline.tracking import is_server

    uri = config.tracking.uri
    if is_server(uri):
        url = experiment_url(uri, experiment_id(config))
        return f"open {url} in a browser (the tracking server serves the MLflow UI)"
    url = experiment_url(f"http://127.0.0.1:{port}", experiment_id(config))
    return " ".join(ui_command(config, port)) + f"   # then open {url}"


def experiment_url(base_url: str, experiment: str | None) -> str:
    """The UI page of experiment id ``experiment``'s runs table; the experiment list when there is none yet."""
    page = f"experiments/{experiment}/runs" if experiment is not None else "experiments"
    return f"{base_url.rstrip('/')}/#/{page}?{RUNS_VIEW}"


def experiment_id(config: Config) -> str | None:
    """The id of the config's active experiment in its tracking store; None when it has none yet. A local
    store that does not exist is not opened (opening it would create it)."""
    from pipeline.tracking import is_server, make_client

    uri = config.tracking.uri
    if not is_server(uri) and not Path(uri.removeprefix("sqlite:///").removeprefix("file://")).exists():
        return None
    experiment = make_client(uri).get_experiment_by_name(config.tracking.experiment)
    if experiment is None or experiment.lifecycle_stage != "active":
        return None
    return str(experiment.experiment_id)


def ui_command(config: Config, port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command line for this config's tracking store, bound to 127.0.0.1, with one worker
    process (MLflow's default 4 take ~1.2 GB and start slower; one user's browser needs one)."""
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    return [
        str(mlflow_bin),
        "ui",
        "--backend-store-uri",
        config.tracking.uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
