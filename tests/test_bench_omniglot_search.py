"""``learn2tune bench omniglot-search``: one real search and evaluate stage per family, trained as its table cell.

Runs the ``smoke`` budget (synthetic glyphs, 2 trials of 4 meta-iterations, 10 test episodes) with a
real Ray runtime, SQLite MLflow store and Parquet datasets, for MAML (28x28) and MANN (20x20).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from mlflow import MlflowClient

from benchmarks import omniglot_jobs, omniglot_search, omniglot_table
from benchmarks.omniglot_config import load_family, resolve
from learners.registry import get_family
from pipeline import cli

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("maml", "mann")


@pytest.fixture(scope="module")
def searched(tmp_path_factory, pipeline_ray):
    """(root, argv, summary, printed lines) of one smoke search over FAMILIES."""
    root = tmp_path_factory.mktemp("omniglot-search")
    argv = [
        "--budget", "smoke",
        "--families", ",".join(FAMILIES),
        "--device", "cpu",
        "--workdir", str(root / "runs"),
        "--tracking-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--out", str(root / "search.md"),
    ]  # fmt: skip
    lines: list[str] = []
    assert omniglot_search.main(argv, say=lines.append) == 0
    summary = json.loads((root / "runs" / "tune" / omniglot_search.SUMMARY_FILE).read_text())
    return root, argv, summary, lines


@pytest.mark.slow  # the module fixture's five family searches take ~60 s
def test_each_family_is_searched_as_its_table_cell_trains_starting_from_the_paper(searched):
    root, _, summary, _ = searched
    assert list(summary["families"]) == list(FAMILIES)
    for family in FAMILIES:
        cell = resolve(load_family(REPO / "configs" / "omniglot" / f"{family}.yaml"), "5w1s", "cpu")
        experiment = root / "runs" / "tune" / f"omniglot-search-{family}"
        result = json.loads((experiment / "search_result.json").read_text())
        assert result["val_episodes"]["ways"] == cell.train.ways
        assert (result["val_episodes"]["shots"], result["val_episodes"]["query"]) == (
            cell.train.shots,
            cell.train.query,
        )
        assert len(result["trials"]) == 2 and all(t["error"] is None for t in result["trials"])
        assert all(t["iterations"] <= 2 * omniglot_jobs.SMOKE_ITERATIONS for t in result["trials"])
        space = get_family(family).search_space
        fixed = {k: v for k, v in cell.hparams.items() if k not in space}
        for trial in result["trials"]:  # what is not searched stays as the cell has it
            assert {k: trial["params"][k] for k in fixed} == fixed
        # the paper's point (the cell's searched values) is the second trial, after the sampler's first draw
        paper = next(t for t in result["trials"] if t["index"] == 1)
        assert {k: paper["hparams"][k] for k in cell.hparams if k in space} == {
            k: v for k, v in cell.hparams.items() if k in space
        }
        assert summary["families"][family]["paper_point"]["trial_id"] == paper["trial_id"]
        manifest = json.loads((Path(result["dataset"]["dir"]) / "manifest.json").read_text())
        assert manifest["build"]["image_size"] == cell.image_size  # MANN 20x20, the table's dataset directory
        evaluation = json.loads((experiment / "evaluation.json").read_text())
        assert evaluation["test_episodes"] == {"query": 5, "episodes": omniglot_jobs.SMOKE_EPISODES, "seed": 0}
        best = summary["families"][family]["best"]
        assert best["val_accuracy"] == max(t["val_accuracy"] for t in result["trials"])
        assert 0.0 <= best["test"]["accuracy"] <= 1.0 and list(evaluation["models"][0]["results"]) == ["5w1s"]


@pytest.mark.slow  # the module fixture's five family searches take ~60 s
def test_the_report_gives_each_familys_paper_point_and_best_trial(searched):
    root, argv, summary, _ = searched
    text = (root / "search.md").read_text()
    assert f"- Command: `learn2tune bench omniglot-search {' '.join(argv)}`" in text
    assert "trials get 1 CPU and 0 GPU each" in text
    for family, record in summary["families"].items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {family} | 2 | "))
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[2] == f"{100 * record['paper_point']['val_accuracy']:.2f}"
        assert cells[3] == f"{100 * record['best']['val_accuracy']:.2f}"
        assert cells[4].startswith(f"{100 * record['best']['test']['accuracy']:.2f} ± ")
        if record["best"]["trial_id"] == record["paper_point"]["trial_id"]:
            assert cells[5] == "the paper point"
        else:  # the searched values only: what is fixed is the cell's
            assert "lr=" in cells[5] and "test_inner_steps" not in cells[5]


@pytest.mark.slow  # the module fixture's five family searches take ~60 s
def test_every_family_is_one_search_run_with_its_trials_in_mlflow(searched):
    root, _, summary, _ = searched
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(omniglot_search.EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("learn2tune.role") == "search"]
    assert sorted(r.data.tags["learn2tune.families"] for r in parents) == sorted(FAMILIES)
    assert all(r.info.run_name.startswith(f"omniglot-search-{r.data.tags['learn2tune.families']}-") for r in parents)
    for parent in parents:
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
        assert "test_acc_5w1s" in parent.data.metrics


@pytest.mark.slow  # the module fixture's five family searches take ~60 s
def test_the_printed_command_fills_the_tables_tuned_column(searched, tmp_path, monkeypatch):
    root, _, summary, lines = searched
    printed = "\n".join(lines).splitlines()
    command = next(line.strip() for line in printed if line.strip().startswith("learn2tune bench omniglot "))
    argv = shlex.split(command)[3:]
    out = tmp_path / "table.md"
    monkeypatch.chdir(REPO)
    argv += ["--families", ",".join(FAMILIES), "--settings", "5w1s", "--device", "cpu", "--out", str(out)]
    argv += ["--workdir", str(root / "runs"), "--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]
    assert omniglot_table.main(argv) == 0
    cells = json.loads(out.with_suffix(".json").read_text())["cells"]
    doc = json.loads(out.with_suffix(".json").read_text())
    assert not any("another dataset" in note for note in doc.get("notes", []))
    table = out.read_text()
    for cell in cells:
        record = summary["families"][cell["family"]]
        best = record["best"]
        assert doc["tuned"]["families"][cell["family"]]["results"]["5w1s"]["accuracy"] == best["test"]["accuracy"]
        row = next(line for line in table.splitlines() if line.startswith(f"| {cell['family']} | 5w1s |"))
        tuned = f"{100 * best['test']['accuracy']:.2f} ± {100 * best['test']['ci95']:.2f}"
        paper = best["trial_id"] == record["paper_point"]["trial_id"]
        assert f"| {tuned}{' (paper' + chr(39) + 's)' if paper else ''} |" in row


@pytest.mark.slow  # the module fixture's five family searches take ~60 s
def test_resume_keeps_the_families_it_finished(searched):
    _, argv, summary, _ = searched
    lines: list[str] = []
    assert omniglot_search.main([*argv, "--resume"], say=lines.append) == 0
    assert sum("kept from the previous run" in line for line in lines) == len(FAMILIES)
    assert not any("start" in line and "[" in line for line in lines)  # no trial ran


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--trials", "0"], "argument --trials: expected a positive whole number, got '0'"),
        (["--families", "nope"], "argument --families: unknown family 'nope'; choose from all, protonet"),
        (["--data", "/nonexistent"], "no Omniglot in /nonexistent"),
    ],
)
def test_bad_arguments_are_one_line_errors(args, expected, capsys):
    assert cli.main(["bench", "omniglot-search", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]
