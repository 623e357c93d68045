"""The CLI: instant --help, and the ui command line. Bad input: tests/test_bad_input.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time


def test_help_answers_in_under_a_second():
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0 and "build" in done.stdout and "register" in done.stdout
    assert elapsed < 1.0, f"--help took {elapsed:.2f} s"


def test_ui_command_binds_to_localhost(tmp_path):
    from pipeline.config import load_config
    from pipeline.ui import ui_command

    (tmp_path / "tiny.yaml").write_text(f'name: clitest\ntracking: {{uri: "sqlite:///{tmp_path}/mlflow.db"}}\n')
    config = load_config(tmp_path / "tiny.yaml", cwd=tmp_path, environ=os.environ)
    command = ui_command(config)
    assert command[1:] == [
        "ui",
        "--backend-store-uri",
        f"sqlite:///{tmp_path}/mlflow.db",
        "--host",
        "127.0.0.1",
        "--port",
        "5000",
    ]
