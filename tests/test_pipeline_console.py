"""The console: --version, hints that keep the user's command line, progress in a log and on a
terminal, search progress lines, and the families a short search leaves out."""

from __future__ import annotations

import io
from importlib.metadata import version

from pipeline.bar import Bar
from pipeline.cli import _parser, main
from pipeline.invocation import Invocation
from pipeline.progress import trials_done_line
from pipeline.space import queued_families, untried_families

CONFIG = """\
name: console
workdir: {root}/runs
tracking: {{uri: "sqlite:///{root}/mlflow.db"}}
data: {{synthetic_classes: 30, synthetic_images_per_class: 4}}
episodes:
  train: {{ways: 3, shots: 1, query: 2}}
  test: {{ways: [3], shots: [1], query: 2}}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def invocation(*argv: str) -> Invocation:
    return Invocation.of(list(argv), _parser().parse_args(list(argv)))


def test_version_prints_the_installed_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"learn2tune {version('learn2tune')}"


def test_hints_keep_the_config_experiment_overrides_and_model_name():
    search = invocation("search", "my configs/x.yaml", "--experiment", "omni", "--set", "workdir=/r", "--trials", "4")
    assert search.complete("no finished search; run `learn2tune evaluate` first") == (
        "no finished search; run `learn2tune evaluate 'my configs/x.yaml' --experiment omni --set workdir=/r` first"
    )
    assert search.again("--resume") == (
        "learn2tune search 'my configs/x.yaml' --experiment omni --set workdir=/r --trials 4 --resume"
    )
    register = invocation("register", "--name", "omni-5w1s")  # the default config: none named
    assert register.command("promote") == "learn2tune promote --name omni-5w1s"
    assert register.command("evaluate") == "learn2tune evaluate"  # evaluate has no --name
    build = invocation("build", "omniglot", "c.yaml", "--out", "/d/omni", "--path", "/zips")
    assert build.command("search") == "learn2tune search c.yaml --set data.dir=/d/omni"
    assert build.complete("text without hints, `learn2tune bench`") == "text without hints, `learn2tune bench`"
    # report's --out is its markdown file, not a dataset directory for the stages after it
    report = invocation("report", "cross-domain", "c.yaml", "--experiments", "a,b", "--out", "t.md")
    assert report.command("evaluate") == "learn2tune evaluate c.yaml"


def test_build_takes_the_config_and_source_in_either_order():
    parsed = _parser().parse_args(["build", "synthetic", "c.yaml"])
    assert (parsed.config, parsed.source) == ("c.yaml", "synthetic")
    parsed = _parser().parse_args(["build", "-c", "c.yaml"])  # the deprecated form still works
    assert (parsed.config, parsed.source) == ("c.yaml", None)


def test_progress_in_a_log_is_a_plain_line_every_interval():
    lines: list[str] = []
    clock = Clock()
    bar = Bar("build", 400, "classes", lines.append, every_s=30.0, clock=clock)
    for second in range(1, 101):  # 4 classes a second for 100 s
        clock.now = float(second)
        bar.advance(4)
    assert lines == [
        "  build: 120/400 classes (30%), 4.0/s, 30s elapsed, ETA 1m10s",
        "  build: 240/400 classes (60%), 4.0/s, 1m00s elapsed, ETA 40s",
        "  build: 360/400 classes (90%), 4.0/s, 1m30s elapsed, ETA 10s",
    ]


def test_progress_on_a_terminal_is_a_bar_with_an_eta():
    stream, lines = io.StringIO(), list[str]()
    bar = Bar("version 2", 6, "episodes", lines.append, stream=stream)
    for _ in range(6):
        bar.advance(1)
    drawn = stream.getvalue()
    assert "\r" in drawn and "version 2: 100%" in drawn and "6/6" in drawn and not lines


def test_build_in_a_log_prints_plain_progress_and_its_next_step(tmp_path, capsys):
    config = tmp_path / "console.yaml"
    config.write_text(CONFIG.format(root=tmp_path))
    assert main(["build", str(config), "--experiment", "glyphs"]) == 0
    printed = capsys.readouterr().out
    assert "\r" not in printed and "processed 30/30 classes (100%)" in printed
    assert printed.rstrip().endswith(
        "next, search learner families and their hyperparameters on it:\n"
        f"  learn2tune search {config} --experiment glyphs"
    )
    assert (tmp_path / "runs" / "datasets" / "glyphs" / "manifest.json").is_file()


def test_search_progress_counts_trials_with_an_eta():
    assert trials_done_line(3, 8, 90.0, 3) == "  3 of 8 trials done, 1m30s elapsed, ETA 2m30s"
    assert trials_done_line(8, 8, 240.0, 8) == "  8 of 8 trials done, 4m00s elapsed"
    # resumed: 5 trials finished before; the 1 ended in this session sets the pace
    assert trials_done_line(6, 8, 20.0, 1) == "  6 of 8 trials done, 20s elapsed, ETA 40s"


def test_a_search_with_fewer_trials_than_families_names_those_it_leaves_out():
    families = ("protonet", "maml", "relation", "reptile", "mann")
    assert queued_families(families, "relation", {}) == ["protonet", "maml", "reptile", "mann"]
    assert untried_families(families, "relation", {}, trials=3) == ["reptile", "mann"]
    # a family with a point to evaluate is queued again after its own draw, so it takes a place
    assert untried_families(families, "relation", {"relation": {"lr": 0.1}}, trials=4) == ["reptile", "mann"]
    assert untried_families(families, "relation", {}, trials=4) == ["mann"]
    assert untried_families(families, "maml", {}, trials=5) == []


def test_a_warm_started_search_leaves_out_families_after_those_queued_from_past_searches():
    families = ("protonet", "maml", "relation", "reptile", "mann")
    # past searches queued reptile then protonet first; the others follow in the config's order
    assert untried_families(families, "reptile", {}, trials=3, warm_queued=("reptile", "protonet")) == [
        "relation",
        "mann",
    ]
    assert untried_families(families, "reptile", {}, trials=5, warm_queued=("reptile", "protonet")) == []
