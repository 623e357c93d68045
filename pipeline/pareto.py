"""Accuracy against latency over a search's trials, and the Pareto front of the two.

At search end the driver times each trial's best checkpoint on the standard request
(:mod:`pipeline.model_cost`): the learner in-process on CPU, as serving runs it, up to ``CALLS``
timed calls after ``WARMUP``, stopping after ``BUDGET_S`` seconds of them (at least 5 calls;
fewer than register's 50: this is a ranking figure, and the median, which it uses, settles
fast). Only trials with a checkpoint are timed, the ``MAX_TRIALS`` best by validation
accuracy, so a big search's end stays short (a few seconds for the quickstart's 6). Each trial run
gets the figure as metric ``latency_p50_ms``; the parent run gets ``search/pareto.png`` and
``search/pareto.json`` (every timed trial, the front flagged).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from learners.checkpoint import load_learner
from pipeline.model_cost import learner_request, test_split, time_calls
from pipeline.records import SearchResult, TrialRecord
from tasks import storage
from tasks.say import Say as Out
from tasks.store import SplitStore

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from pipeline.config import Config

PARETO_PLOT = "search/pareto.png"
PARETO_POINTS = "search/pareto.json"
LATENCY_METRIC = "latency_p50_ms"
CALLS, WARMUP, BUDGET_S, MAX_TRIALS = 20, 2, 0.5, 50


@dataclass(frozen=True)
class Point:
    """One timed trial."""

    trial_id: str
    family: str
    val_accuracy: float
    latency_ms: float  # p50 of the standard request
    calls: int
    front: bool = False


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (accuracy, latency) points no other point beats: at least as accurate and as
    fast, and strictly better in one. Ties (the same point twice) are both on the front."""

    def beaten(accuracy: float, latency: float) -> bool:
        return any(a >= accuracy and t <= latency and (a > accuracy or t < latency) for a, t in points)

    return [i for i, (accuracy, latency) in enumerate(points) if not beaten(accuracy, latency)]


def log_pareto(client: MlflowClient, run_id: str, result: SearchResult, config: Config, out: Out) -> None:
    """Time the search's best trials, then log the plot, the points and each trial's latency metric."""
    timed = [t for t in result.trials if t.evaluable][:MAX_TRIALS]
    if not timed:
        return
    split = test_split(config)
    out(f"Pareto plot: timing {len(timed)} trial checkpoint(s) on the standard request (up to {CALLS} calls each)")
    points = [_time_trial(trial, split, config.storage.endpoint_url) for trial in timed]
    front = set(pareto_front([(p.val_accuracy, p.latency_ms) for p in points]))
    points = [Point(**{**asdict(p), "front": i in front}) for i, p in enumerate(points)]
    for trial, point in zip(timed, points, strict=True):
        if trial.run_id:
            client.log_metric(trial.run_id, LATENCY_METRIC, point.latency_ms)
    left = sum(1 for t in result.trials if t.evaluable) - len(timed)
    client.log_dict(run_id, {"max_calls": CALLS, "untimed_trials": left, "points": [asdict(p) for p in points]},
                    PARETO_POINTS)  # fmt: skip
    client.log_figure(run_id, pareto_plot(points, f"{result.experiment}: accuracy vs latency"), PARETO_PLOT)


def pareto_plot(points: Sequence[Point], title: str) -> Figure:
    """Validation accuracy against latency, one colour per family, the front joined and labelled."""
    figure = Figure(figsize=(7, 4), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    for family in dict.fromkeys(p.family for p in points):
        mine = [p for p in points if p.family == family]
        ax.scatter([p.latency_ms for p in mine], [p.val_accuracy for p in mine], label=family, zorder=3)
    front = sorted((p for p in points if p.front), key=lambda p: p.latency_ms)
    ax.step([p.latency_ms for p in front], [p.val_accuracy for p in front], where="post", color="black", linewidth=1)
    ax.scatter([p.latency_ms for p in front], [p.val_accuracy for p in front], s=140, facecolors="none",
               edgecolors="black", label="Pareto front", zorder=4)  # fmt: skip
    for p in front:
        ax.annotate(p.family, (p.latency_ms, p.val_accuracy), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(xlabel="inference latency, p50 (ms, 5-way 5-shot + 75 queries, CPU)", ylabel="best validation accuracy")
    ax.legend(loc="best")
    ax.set_title(title)
    return figure


def _time_trial(trial: TrialRecord, split: SplitStore | None, endpoint_url: str | None) -> Point:
    assert trial.checkpoint is not None and trial.val_accuracy is not None  # evaluable
    with storage.local_copy(storage.resolve(trial.checkpoint, endpoint_url), "learn2tune-ckpt-") as checkpoint:
        learner, _ = load_learner(checkpoint, "cpu")
    learner.eval()
    request = learner_request(learner, split)
    support_x, support_y, query_x = request.tensors()
    timing = time_calls(lambda: learner.predict(support_x, support_y, query_x), CALLS, WARMUP, BUDGET_S)
    return Point(trial.trial_id, trial.family, trial.val_accuracy, timing.p50_ms, timing.calls)
