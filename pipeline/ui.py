"""How a user opens the MLflow UI on a config's tracking store: the server's own URL, or ``mlflow ui``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import Config


def ui_hint(config: Config) -> str:
    """How to open the MLflow UI: a tracking server serves it at its own URL (``mlflow ui`` cannot
    open an HTTP store); a local store needs ``mlflow ui``."""
    from pipeline.tracking import is_server

    if is_server(config.tracking.uri):
        return f"open {config.tracking.uri} in a browser (the tracking server serves the MLflow UI)"
    return " ".join(ui_command(config))


def ui_command(config: Config, port: int = 5000) -> list[str]:
    """The ``mlflow ui`` command line for this config's tracking store, bound to 127.0.0.1."""
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
    ]
