"""The CLI: instant --help, and bad input that ends in one line, exit status 2, and no writes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.cli import main

TINY = """\
name: clitest
workdir: {root}/runs
tracking: {{uri: "sqlite:///{root}/mlflow.db"}}
data: {{synthetic_classes: 30, synthetic_images_per_class: 6}}
episodes:
  train: {{ways: 3, shots: 1, query: 2}}
  val: {{episodes: 4}}
  test: {{ways: [3], shots: [1], query: 2, episodes: 4}}
search: {{families: [maml], trials: 1, max_iterations: 2, grace_iterations: 1, eval_every: 1, checkpoint_every: 1}}
"""


@pytest.fixture(scope="module")
def pipeline_built(tmp_path_factory) -> Path:
    """A directory with a config and its tiny built dataset (and nothing else)."""
    root = tmp_path_factory.mktemp("cli")
    (root / "tiny.yaml").write_text(TINY.format(root=root))
    assert main(["build", "-c", str(root / "tiny.yaml")]) == 0
    return root


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def test_help_answers_in_under_a_second():
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    assert done.returncode == 0 and "build" in done.stdout and "register" in done.stdout
    assert elapsed < 1.0, f"--help took {elapsed:.2f} s"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["search", "--set", "data.dir={root}/nowhere"], "dataset directory {root}/nowhere does not exist"),
        (["search", "--set", "episodes.train.ways=25"], "25-way episodes need 25 classes"),
        (["search", "--set", "episodes.train.query=9"], "shots + query = 1 + 9 = 10 images per class"),
        (["run", "--ways", "3,20"], "20-way episodes need 20 classes but split 'test' has"),
        (["search", "--gpus-per-trial", "1"], "search.resources.gpu asks for 1 GPU(s) per trial"),
        (["search", "--families", "maml,nope"], "unknown learner family 'nope'"),
        (["search", "--trials", "few"], "search.trials must be an integer >= 1, got 'few'"),
        (["evaluate"], "no finished search for experiment 'clitest'"),
        (["register"], "has not been evaluated; run `learn2tune evaluate` first"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(pipeline_built, pipeline_ray, capsys, argv, message):
    root = pipeline_built
    before = snapshot(root)
    argv = [a.format(root=root) for a in argv]
    code = main([argv[0], str(root / "tiny.yaml"), *argv[1:]])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("learn2tune: error: "), err
    assert message.format(root=root) in lines[0]
    assert snapshot(root) == before


def test_build_refuses_a_directory_holding_another_dataset(pipeline_built, capsys):
    before = snapshot(pipeline_built)
    code = main(["build", "-c", str(pipeline_built / "tiny.yaml"), "--set", "data.synthetic_classes=31"])
    assert code == 2 and "holds a different dataset" in capsys.readouterr().err
    assert snapshot(pipeline_built) == before


def test_ui_command_binds_to_localhost(pipeline_built):
    from pipeline.cli import ui_command
    from pipeline.config import load_config

    config = load_config(pipeline_built / "tiny.yaml", cwd=pipeline_built, environ=os.environ)
    command = ui_command(config)
    assert command[1:] == [
        "ui", "--backend-store-uri", f"sqlite:///{pipeline_built}/mlflow.db", "--host", "127.0.0.1", "--port", "5000"
    ]
