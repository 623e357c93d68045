"""Start a scoring server as a child process and wait until it answers (tests, benchmarks).

    with local_server([learn2tune, "serve", "configs/quickstart.yaml", "--port", str(port)], port) as client:
        client.predict(...)

The child runs in its own process group, so the server's worker processes stop with it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from deploy.client import FewShotClient


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def local_server(
    command: list[str], port: int, env: Mapping[str, str] | None = None, timeout: float = 180.0
) -> Iterator[FewShotClient]:
    """Run ``command`` (a server listening on ``port``); yield a client once ``GET /ping`` answers."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(env or os.environ),
        start_new_session=True,
    )  # fmt: skip
    try:
        client = FewShotClient(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + timeout
        while not client.ping():
            if process.poll() is not None or time.monotonic() > deadline:
                _stop(process)
                output = process.stdout.read() if process.stdout is not None else ""
                raise RuntimeError(f"{' '.join(command)} did not come up:\n{output}")
            time.sleep(0.5)
        yield client
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
