"""Checks a command makes before it starts anything: a port a server can listen on, and a local
tracking store that exists for the commands that only read the registry (MLflow would create an
empty store, a ~1 MB ``mlflow.db``, just to say the model is not there)."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

from pipeline.errors import PipelineError


def check_port_free(host: str, port: int) -> None:
    """PipelineError unless a server can listen on ``host:port`` now (probed as uvicorn binds,
    with ``SO_REUSEADDR``: a port in TIME_WAIT is free, one a server listens on is not)."""
    if not 0 < port < 65536:
        raise PipelineError(f"--port must be in 1-65535, got {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise PipelineError(f"--host {host}: not an address of this machine ({exc.strerror})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PipelineError(
                    f"port {port} on {host} is in use: another server listens there; stop it or choose "
                    "another port with --port"
                ) from None
            raise PipelineError(f"cannot listen on {host}:{port} ({exc.strerror}); check --host and --port") from None


def check_registry_exists(uri: str, model_name: str) -> None:
    """For a local store (SQLite file or store directory) that does not exist: the registry's own
    "no registered model" error, without creating the store."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
    elif "://" not in uri:
        path = Path(uri)
    else:
        return  # a tracking server, or a store MLflow opens without creating files here
    if not path.exists():
        raise PipelineError(
            f"no registered model {model_name!r} in {uri}; run `learn2tune register` first "
            "(registry.model_name / --name picks the model)"
        )
