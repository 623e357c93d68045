"""``learn2tune bench omniglot``: the per-family configs, the table, its JSON and MLflow runs.

The fast test runs the benchmark on its ``smoke`` budget (2 meta-iterations per cell, 10 test
episodes, synthetic glyphs: no Omniglot needed) for three families, one of them at another image
size (MANN, 20x20) and one with a shared training recipe (ProtoNet's 5- and 20-way 1-shot).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from benchmarks import omniglot_report as report
from benchmarks import omniglot_table
from benchmarks.omniglot_config import SETTINGS, load_families, load_family, resolve, select_families
from learners.registry import family_names
from pipeline import cli
from pipeline.errors import ConfigError
from pipeline.evaluate import select_trials
from pipeline.records import TrialRecord

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "omniglot"
FAMILIES, SETTINGS_RUN = ("protonet", "maml", "mann"), ("5w1s", "20w1s")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke run: (return code, table text, results JSON, tracking URI, tuned accuracy)."""
    root = tmp_path_factory.mktemp("bench")
    evaluation = {
        "dataset": {"fingerprint": "f" * 64},
        "test_episodes": {"query": 15, "episodes": 600, "seed": 0},
        "models": [  # two protonet trials: the one with the better validation accuracy fills the column
            {
                "trial_id": "a",
                "family": "protonet",
                "val_accuracy": 0.9,
                "params": {},
                "results": {"5w1s": {"accuracy": 0.95, "ci95": 0.01}},
            },
            {
                "trial_id": "b",
                "family": "protonet",
                "val_accuracy": 0.8,
                "params": {},
                "results": {"5w1s": {"accuracy": 0.5, "ci95": 0.01}},
            },
        ],
    }
    (root / "search").mkdir()
    (root / "search" / "evaluation.json").write_text(json.dumps(evaluation))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    out = root / "docs" / "table.md"
    argv = [
        "--budget",
        "smoke",
        "--families",
        ",".join(FAMILIES),
        "--settings",
        ",".join(SETTINGS_RUN),
        "--device",
        "cpu",
        "--out",
        str(out),
        "--workdir",
        str(root / "runs"),
        "--tracking-uri",
        uri,
        "--tuned",
        str(root / "search"),
    ]
    code = omniglot_table.main(argv)
    return code, out.read_text(), json.loads(out.with_suffix(".json").read_text()), uri


def _rows(table: str) -> dict[tuple[str, str], list[str]]:
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in family_names():
            rows[cells[0], cells[1]] = cells
    return rows


def test_smoke_table_has_every_requested_row_with_ci_paper_and_diff(smoke):
    code, table, results, _ = smoke
    assert code == 0
    rows = _rows(table)
    assert set(rows) == {(f, s) for f in FAMILIES for s in SETTINGS_RUN}
    by_cell = {(c["family"], c["setting"]): c for c in results["cells"]}
    for key, cells in rows.items():
        cell = by_cell[key]
        _, _, ours, paper, diff, tuned, budget, rate, episodes, _, _ = cells
        assert ours == f"{100 * cell['accuracy']:.2f} ± {100 * cell['ci95']:.2f}"
        assert 0.0 <= cell["accuracy"] <= 1.0 and cell["ci95"] >= 0.0 and cell["episodes"] == 10
        if cell["paper"] is None:
            assert paper == diff == "–"
        else:
            assert float(paper) == cell["paper"]
            assert float(diff) == pytest.approx(100 * cell["accuracy"] - cell["paper"], abs=0.006)
            assert diff[0] == ("-" if 100 * cell["accuracy"] < cell["paper"] else "+")
        assert budget.startswith(f"2 of {cell['full_iterations']:,} it")
        assert float(rate) > 0 and float(episodes) > 0
        assert tuned == ("95.00 ± 1.00" if key == ("protonet", "5w1s") else "–")
    assert rows["mann", "20w1s"][3] == "–"  # no published 20-way MANN figure
    assert rows["protonet", "5w1s"][3] == "98.8"
    assert results["cells"][1]["shared_with"] == "5w1s"  # ProtoNet 20w1s: the 5w1s model (60-way training)


def test_smoke_table_header_names_commit_hardware_budget_and_command(smoke):
    _, table, results, _ = smoke
    sha = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    assert re.search(rf"Commit: `{sha}(-dirty)?`", table)
    assert "Budget: **smoke**" in table and "cores" in table and "torch" in table
    assert "Command: `learn2tune bench omniglot --budget smoke --families protonet,maml,mann" in table
    assert "Status: complete: 6 cells." in table
    assert results["dataset"]["fingerprints"].keys() == {"20", "28"}  # MANN's 20x20 build beside the 28x28 one
    assert results["hardware"]["cores"] >= 1 and results["wall_seconds"] > 0


def test_smoke_run_logs_a_parent_and_one_run_per_cell_to_mlflow(smoke):
    _, _, results, uri = smoke
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("omniglot-table")
    parent = client.get_run(results["mlflow"]["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["test_accuracy_protonet_5w1s"] == pytest.approx(results["cells"][0]["accuracy"])
    assert experiment is not None
    children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in children) == sorted(f"{f}-{s}" for f in FAMILIES for s in SETTINGS_RUN)
    for run in children:
        assert run.info.status == "FINISHED"
        assert {"test_accuracy", "test_ci95", "meta_iterations_per_s", "eval_seconds"} <= run.data.metrics.keys()
        assert run.data.params["budget"] == "smoke" and "hparams.width" in run.data.params
        if "learn2tune.model_of" not in run.data.tags:  # a cell that trained: its curves, plot and checkpoint
            assert len(client.get_metric_history(run.info.run_id, "loss")) == 2
            names = {a.path for a in client.list_artifacts(run.info.run_id)}
            assert {"learning_curve.png", "checkpoint"} <= names


@pytest.mark.parametrize("family", family_names())
def test_every_shipped_family_config_loads_with_all_settings_and_budgets(family):
    path = CONFIGS / f"{family}.yaml"
    if not path.is_file():
        pytest.skip(f"{family} has no Omniglot configuration (optional): {path.relative_to(REPO)} is absent")
    plan = load_family(path)
    assert set(plan.settings) == set(SETTINGS)
    for setting in SETTINGS:
        full, cpu = resolve(plan, setting, "full"), resolve(plan, setting, "cpu")
        assert cpu.iterations < full.iterations, setting


def test_all_families_are_those_with_a_configuration_and_the_others_are_skipped_saying_why(tmp_path):
    shutil.copy(CONFIGS / "relation.yaml", tmp_path)
    said: list[str] = []
    assert select_families(tmp_path, ["all"], said.append) == ["relation"]
    assert len(said) == len(family_names()) - 1
    assert f"skipping maml: no Omniglot configuration {tmp_path / 'maml.yaml'} (add one to give it a row)" in said
    assert select_families(tmp_path, ["maml"], said.append) == ["maml"]  # a family asked for by name is not skipped
    with pytest.raises(ConfigError, match="no configuration for family 'maml'"):
        load_families(tmp_path, ["maml"])
    with pytest.raises(ConfigError, match="no family has a configuration here"):
        select_families(tmp_path / "empty", ["all"], said.append)


@pytest.mark.parametrize(
    "pattern, new, field",
    [
        (r"meta_batch: 32\n", "meta_batch: 0\n", "settings.5w1s.meta_batch must be an integer >= 1"),
        (r"inner_steps: 1}", "inner_stepz: 1}", "settings.5w1s.hparams: maml has no hyperparameter 'inner_stepz'"),
        (r"cpu: {iterations: \d+, ", "cpu: {", "settings.5w1s.budget.cpu.iterations is required"),
        (r"{path: split,", "{path: splitt,", "budget_hparams.cpu: maml.path must be 'auto' or one of"),
        (r"  5w1s:\n", "  5w2s:\n", "settings.5w1s is required"),
        (r"family: maml", "family: fomaml", "family is 'fomaml' but the file is named for 'maml'"),
        (r"family: maml", "family: maml: x", "is not valid YAML (line"),
    ],
)
def test_a_bad_config_value_is_reported_with_file_and_field(tmp_path, pattern, new, field):
    text = (CONFIGS / "maml.yaml").read_text()
    bad, count = re.subn(pattern, lambda _: new, text, count=1)
    assert count == 1
    path = tmp_path / "maml.yaml"
    path.write_text(bad)
    with pytest.raises(ConfigError) as error:
        load_family(path)
    assert str(path) in str(error.value) and field in str(error.value)


def test_the_cli_reports_a_bad_config_in_one_line_before_building_anything(tmp_path, capsys):
    shutil.copy(CONFIGS / "relation.yaml", tmp_path / "relation.yaml")
    path = tmp_path / "relation.yaml"
    path.write_text(path.read_text().replace("hidden: 8", "hidden: eight"))
    argv = [
        "bench",
        "omniglot",
        "--budget",
        "smoke",
        "--families",
        "relation",
        "--configs",
        str(tmp_path),
        "--workdir",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "table.md"),
    ]
    assert cli.main(argv) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "hparams: relation.hidden must be int" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "table.md").exists()


def test_a_missing_omniglot_directory_is_a_clear_error(tmp_path, capsys):
    argv = ["bench", "omniglot", "--families", "protonet", "--data", str(tmp_path / "nowhere")]
    assert cli.main(argv) == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert "no Omniglot in" in err and str(tmp_path / "nowhere") in err and "--data DIR" in err


def test_evaluate_takes_the_best_trial_of_every_family_when_asked():
    families = ["maml", "maml", "protonet", "reptile", "protonet"]
    trials = [
        TrialRecord(
            trial_id=str(i), index=i, run_id=f"run-{i}", family=f, params={}, hparams={}, val_accuracy=0.5,
            best_iteration=1, iterations=1, checkpoint="ckpt", final_checkpoint="ckpt", error=None, failed_attempts=0,
        )
        for i, f in enumerate(families)
    ]  # fmt: skip
    assert [t.index for t in select_trials(trials, 1, per_family=False)] == [0]
    assert [t.index for t in select_trials(trials, 1, per_family=True)] == [0, 2, 3]
    assert [t.index for t in select_trials(trials, 3, per_family=True)] == [0, 1, 2, 3]


@pytest.mark.omniglot
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_protonet_5way_1shot_on_real_omniglot_at_the_cpu_budget(tasks_omniglot_dir, tmp_path):
    out = tmp_path / "table.md"
    argv = [
        "--families",
        "protonet",
        "--settings",
        "5w1s",
        "--device",
        "cpu",
        "--data",
        str(tasks_omniglot_dir),
        "--out",
        str(out),
        "--workdir",
        str(tmp_path / "runs"),
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
    ]
    assert omniglot_table.main(argv) == 0
    results = json.loads(out.with_suffix(".json").read_text())
    assert (
        "1200 training characters (1028 train + 172 held out for validation) / 423 test"
        in results["dataset"]["description"]
    )
    assert results["cells"][0]["episodes"] == 600 and results["cells"][0]["accuracy"] > 0.9


def test_the_search_config_tunes_every_family_and_evaluates_each_familys_best(tmp_path):
    from pipeline.config import load_config

    config = load_config(REPO / "configs" / "omniglot-search.yaml", [], cwd=tmp_path, environ={})
    assert set(config.search.families) == set(family_names())
    assert config.registry.best_per_family and config.data.split == "random" and config.data.rotations
    assert (config.episodes.test.ways, config.episodes.test.shots) == ((5, 20), (1, 5))


def test_resume_keeps_the_finished_cells_and_reruns_only_what_changed(smoke, tmp_path, capsys):
    """A second run with --resume keeps every finished cell of the same configuration and reruns
    the cells whose family file changed (here MANN's controller)."""
    _, _, first, _ = smoke
    argv = shlex.split(first["command"])[3:]
    out = Path(argv[argv.index("--out") + 1])
    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS, configs)
    mann = configs / "mann.yaml"
    assert "controller_size: 200" in mann.read_text()
    mann.write_text(mann.read_text().replace("controller_size: 200", "controller_size: 100"))
    argv += ["--resume", "--configs", str(configs)]
    capsys.readouterr()

    assert omniglot_table.main(argv) == 0
    printed = capsys.readouterr().out
    second = json.loads(out.with_suffix(".json").read_text())
    before = {(c["family"], c["setting"]): c for c in first["cells"]}
    after = {(c["family"], c["setting"]): c for c in second["cells"]}
    assert after.keys() == before.keys()
    for key, cell in after.items():
        if key[0] == "mann":  # changed: trained and tested again, in a new MLflow run
            assert cell["run_id"] != before[key]["run_id"] and cell["hparams"]["controller_size"] == 100
        else:  # kept as they were
            assert cell == {**before[key], "commit": first["commit"]}
    assert printed.count("kept from the previous run") == 4
    seconds = sum(c["eval_seconds"] + (0 if c["shared_with"] else c["train_seconds"]) for c in second["cells"])
    header = out.read_text()
    assert f"; all 6 cells, kept ones included, trained and tested in {report.duration(seconds)}." in header
    assert "kept ones included" not in smoke[1]
    assert printed.count("\n  training ") == 2  # MANN's 5-way and 20-way models, nothing else
