"""Where runs come from: the context tags of a git checkout, and none outside one. (What a search
leaves on its runs, these tags included, is checked on the end-to-end run, tests/test_pipeline_e2e.py.)"""

from __future__ import annotations

import subprocess

import pytest

from pipeline.run_context import PROJECT_ROOT, git_tags


def test_git_tags_name_the_checkout_commit_and_nothing_outside_one(tmp_path):
    done = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip("the project is not a git checkout here")
    assert git_tags(PROJECT_ROOT)["mlflow.source.git.commit"] == done.stdout.strip()
    assert git_tags(tmp_path) == {}
