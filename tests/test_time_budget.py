"""Time-budgeted searches: the budget's forms, and a real search (Ray, MLflow, Optuna, Parquet) that
only its budget can end.

The search (module fixture) runs ProtoNet trials of 100000 meta-iterations, no trial cap, an 8 s
budget: the trials must end themselves, each at its first report past the deadline, with a checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest

from learners.checkpoint import load_learner
from pipeline.cli import _parser, main
from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.time_budget import parse_budget

BUDGET_S = 8
CONFIG = """\
name: budget
workdir: {root}/runs
tracking: {{uri: "sqlite:///{root}/mlflow.db"}}
data: {{synthetic_classes: 40, synthetic_images_per_class: 12}}
episodes:
  train: {{ways: 5, shots: 1, query: 5}}
  meta_batch: 4
  val: {{episodes: 10}}
  test: {{query: 5, episodes: 20}}
search:
  families: [protonet]
  trials: {trials}
  time_budget: {budget}
  max_iterations: 100000
  eval_every: 10
  checkpoint_every: 1000
  fixed:
    protonet: {{width: 16, train_ways: 0}}
"""


@pytest.mark.parametrize(
    "value, seconds",
    [(None, None), ("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("1h 2m 3s", 3723), (45, 45),
     (2.5, 2.5), ("600", 600)],
)  # fmt: skip
def test_budget_forms_are_seconds(value, seconds):
    assert parse_budget(value) == seconds


@pytest.mark.parametrize("value", ["soon", "30 minutes", "1m30h", "0s", 0, -5, "", True, "nan", [30]])
def test_a_bad_budget_is_one_line_naming_the_field_and_the_forms(value):
    with pytest.raises(ConfigError) as error:
        parse_budget(value)
    assert str(error.value).startswith("config error: search.time_budget must be null or a duration: 90s, 30m")
    assert "\n" not in str(error.value)


def test_no_trial_cap_needs_a_budget(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("search: {trials: null}\n")
    with pytest.raises(ConfigError, match=r"search.trials is null .* search.time_budget is not set"):
        load_config(config, cwd=tmp_path, environ={})
    loaded = load_config(config, [("search.time_budget", "1h30m")], cwd=tmp_path, environ={})
    assert loaded.search.trials is None and loaded.search.time_budget == "1h30m"


def test_cli_time_budget_without_trials_lifts_the_cap_and_says_so(tmp_path, capsys):
    from pipeline.cli import _config

    config = tmp_path / "c.yaml"
    config.write_text("search: {trials: 6}\n")
    lifted = _config(_parser().parse_args(["search", str(config), "--time-budget", "20m"]))
    assert lifted.search.trials is None and lifted.search.time_budget == "20m"
    assert "no cap on trials (the config's search.trials: 6 is lifted" in capsys.readouterr().out
    kept = _config(_parser().parse_args(["search", str(config), "--time-budget", "90", "--trials", "3"]))
    assert kept.search.trials == 3 and kept.search.time_budget == 90
    assert capsys.readouterr().out == ""
    assert main(["search", str(config), "--time-budget", "soon"]) == 2
    assert "search.time_budget must be null or a duration" in capsys.readouterr().err


def test_resume_gives_the_rest_of_the_budget_and_keeps_having_one():
    from pipeline.errors import PipelineError
    from pipeline.time_budget import budget_of, new_clock, resumed_clock

    first = {"experiment_id": "1", **new_clock(600.0, now=1000.0)}
    # killed at 1100 (Tune last saved its state at 1090), resumed at 5000 with the budget raised
    resumed = resumed_clock(first, 900.0, last_saved=1090.0, now=5000.0)
    budget = budget_of({**first, **resumed})
    assert budget and budget.used_before == 90.0 and budget.deadline == 5000.0 + 900.0 - 90.0
    assert budget.used(5100.0) == 190.0
    with pytest.raises(PipelineError, match="began with a time budget of 10m00s; it cannot be resumed without"):
        resumed_clock(first, None, last_saved=1090.0, now=5000.0)
    unbudgeted = new_clock(None, now=1000.0)
    assert budget_of(unbudgeted) is None
    with pytest.raises(PipelineError, match="began without a time budget; it cannot be resumed with"):
        resumed_clock(unbudgeted, 60.0, last_saved=None, now=2000.0)


@pytest.fixture(scope="module")
def budgeted_search(tmp_path_factory, pipeline_ray):
    """A finished budgeted search: its root, output, MLflow client, result and state files."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("budget")
    (root / "budget.yaml").write_text(CONFIG.format(root=root, trials="null", budget=f"{BUDGET_S}s"))
    assert main(["build", str(root / "budget.yaml")]) == 0
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["search", str(root / "budget.yaml")]) == 0
    experiment = root / "runs/tune/budget"
    uri = f"sqlite:///{root}/mlflow.db"
    result = json.loads((experiment / "search_result.json").read_text())
    state = json.loads((experiment / "search_state.json").read_text())
    return root, buffer.getvalue(), MlflowClient(tracking_uri=uri), result, state


def test_budgeted_search_stops_within_one_report_interval_of_its_budget(budgeted_search):
    import optuna

    root, _, client, result, state = budgeted_search
    deadline = state["session_started"] + BUDGET_S
    study = optuna.load_study(study_name=None, storage=f"sqlite:///{root}/runs/tune/budget/optuna.db")
    assert study.trials and all(
        t.datetime_start and t.datetime_start.timestamp() < deadline for t in study.trials
    )  # none launched late
    intervals, last_reports, started = [], [], []
    for trial in result["trials"]:
        run = client.get_run(trial["run_id"])
        times = sorted(m.timestamp / 1000 for m in client.get_metric_history(trial["run_id"], "loss"))
        # the run's own report interval: from its start to its first report, then between reports
        points = [run.info.start_time / 1000, *times]
        intervals += [b - a for a, b in zip(points, points[1:], strict=False)]
        assert times[-1] >= deadline  # it trained up to the deadline...
        assert len(times) < 2 or times[-2] < deadline  # ...and ended at its first report past it
        last_reports.append(times[-1])
        started.append(points[0])
    ended = state["session_started"] + client.get_run(result["mlflow"]["parent_run_id"]).data.metrics["time_used_s"]
    assert 0 <= ended - max(last_reports) < 10  # the search ends with its last trial (Tune winds down)
    if max(started) < deadline:  # on a machine so loaded that trials start after the budget, this cannot hold
        assert max(last_reports) - deadline <= max(intervals), (max(last_reports) - deadline, max(intervals))
    parent = client.get_run(result["mlflow"]["parent_run_id"]).data
    assert parent.metrics["time_budget_s"] == BUDGET_S and parent.tags["learn2tune.time_budget"] == "8s"


def test_budget_ended_trials_have_their_last_checkpoint_and_say_why(budgeted_search):
    _, _, client, result, _ = budgeted_search
    for trial in result["trials"]:
        assert trial["stop_reason"] == "time_budget" and trial["iterations"] < 100000
        _, saved = load_learner(trial["final_checkpoint"])
        assert saved["iteration"] == trial["iterations"]  # its last report's: no work lost
        run = client.get_run(trial["run_id"])
        assert run.info.status == "FINISHED" and run.data.tags["learn2tune.stop_reason"] == "time_budget"
        assert "ended by the time budget" in run.data.tags["mlflow.note.content"]


def test_budgeted_search_progress_and_summary_say_so(budgeted_search):
    from pipeline.bar import duration

    _, output, client, result, _ = budgeted_search
    assert "trials until the time budget is spent (8s left of the 8s time budget)" in output
    assert re.search(r"\n  1 of \? trials done, \w+ elapsed, budget spent\n", output)  # no cap, no ETA
    assert output.count("ended by the time budget at") == len(result["trials"])
    used = client.get_run(result["mlflow"]["parent_run_id"]).data.metrics["time_used_s"]
    ended = len(result["trials"])
    summary = f"time budget 8s: used {duration(used)}; {ended} trials ({ended} ended by the budget)"
    assert summary in output
    table = output[output.index("status") : output.index(summary)]
    assert table.count("time budget") == ended  # the summary table's status column
