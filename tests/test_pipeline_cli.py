"""The CLI: instant --help, the ui command line and its link to the runs table. Bad input: tests/test_bad_input.py."""

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
        "--workers",
        "1",
    ]


def test_ui_hint_links_the_runs_table_of_a_local_store(tmp_path):
    from pipeline.config import load_config
    from pipeline.tracking import ensure_experiment, make_client
    from pipeline.ui import ui_hint

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    (tmp_path / "tiny.yaml").write_text(f'name: clitest\ntracking: {{uri: "{uri}"}}\n')
    config = load_config(tmp_path / "tiny.yaml", cwd=tmp_path, environ=os.environ)
    client = make_client(uri)
    ensure_experiment(client, "other", uri)
    experiment_id = ensure_experiment(client, "clitest", uri)
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    command, link = ui_hint(config, port=5123).split("   # then open ")
    assert command.endswith("--port 5123 --workers 1")
    assert link == f"http://127.0.0.1:5123/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
