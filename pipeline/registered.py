"""What the registry already holds: the version a trial was registered as, so that ``register``
run again on the same evaluation says so instead of silently adding a copy as a new version."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from mlflow import MlflowClient


def check_not_registered(client: MlflowClient, name: str, run_id: str, what: str) -> None:
    """PipelineError naming the version of ``name`` that already holds the model of ``run_id``."""
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if versions:
        first = min(versions, key=lambda v: int(v.version))
        version = client.get_model_version(name, first.version)  # a search leaves out the aliases
        aliases = f" (alias {', '.join(version.aliases)})" if version.aliases else ""
        raise PipelineError(
            f"{what} is already registered as {name} version {version.version}{aliases}; nothing registered. "
            "Gate it with `learn2tune promote`, or search again for a new model"
        )
