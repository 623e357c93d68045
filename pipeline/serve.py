"""The serve command: a registered model version behind MLflow's scoring server.

``mlflow models serve`` (uvicorn; ``POST /invocations``, ``GET /ping``) loads the pyfunc from the
registry in this environment (``--env-manager local``: the project's own packages travel with
the model as code). The version is resolved before the server starts, so a wrong name, alias or
version is one line, not a server that fails to boot.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline import tracking
from pipeline.config import Config
from pipeline.errors import PipelineError

DEFAULT_ALIAS = "champion"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5001  # 5000 is the MLflow UI's


@dataclass(frozen=True)
class ServeTarget:
    """A resolved registered version: the URI given to MLflow, and the version it points at."""

    model_uri: str
    version: str
    family: str


def resolve(config: Config, version: str | None, alias: str | None) -> ServeTarget:
    """``models:/NAME/VERSION`` when ``version`` is given, else ``models:/NAME@ALIAS``; checked."""
    from mlflow.exceptions import MlflowException

    client = tracking.make_client(config.tracking.uri)
    name = config.registry.model_name
    if version is not None and alias is not None:
        raise PipelineError("give --version or --alias, not both")
    tracking.check_registered_model(client, name, config.tracking.uri)
    try:
        if version is not None:
            found, uri = client.get_model_version(name, str(version)), f"models:/{name}/{version}"
        else:
            alias = alias or DEFAULT_ALIAS
            found, uri = client.get_model_version_by_alias(name, alias), f"models:/{name}@{alias}"
    except MlflowException:
        what = f"version {version}" if version is not None else f"version with alias {alias!r}"
        hint = "; `learn2tune promote` sets the champion" if alias == DEFAULT_ALIAS else ""
        raise PipelineError(
            f"model {name!r} in {config.tracking.uri} has no {what}{hint} "
            "(registry.model_name / --name picks the model)"
        ) from None
    return ServeTarget(uri, str(found.version), found.tags.get("family", "unknown family"))


def serve_command(target: ServeTarget, host: str, port: int, workers: int) -> list[str]:
    """The ``mlflow models serve`` command line for ``target``."""
    if not 0 < port < 65536:
        raise PipelineError(f"--port must be in 1-65535, got {port}")
    if workers < 1:
        raise PipelineError(f"--workers must be >= 1, got {workers}")
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    return [
        str(mlflow_bin), "models", "serve", "--model-uri", target.model_uri, "--env-manager", "local",
        "--host", host, "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip


def server_environment(config: Config, environ: dict[str, str]) -> dict[str, str]:
    """The server's environment: this config's tracking store and registry, the venv on PATH."""
    return {
        **with_scripts_on_path(environ),
        "MLFLOW_TRACKING_URI": config.tracking.uri,
        "MLFLOW_REGISTRY_URI": config.tracking.uri,
    }


def with_scripts_on_path(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` with this interpreter's scripts first on PATH: ``mlflow models serve`` starts
    ``uvicorn`` by name, which is found only there when the venv is not activated."""
    return {**environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{environ.get('PATH', '')}"}
