"""The figures logged to MLflow: a trial's learning curve, the search's history and parameter importance
(Agg backend, no pyplot state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def learning_curve(curves: Mapping[str, Sequence[tuple[int, float]]], title: str, chance: float) -> Figure:
    """Loss (left) and accuracies (right, with the ``chance`` level) against meta-iteration.

    ``curves``: metric name -> (step, value) points.
    """
    figure = Figure(figsize=(9, 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    loss_ax, acc_ax = figure.subplots(1, 2)
    for name, points in curves.items():
        if not points:
            continue
        steps, values = zip(*points, strict=True)
        (loss_ax if name == "loss" else acc_ax).plot(steps, values, marker=".", label=name)
    acc_ax.axhline(chance, color="gray", linestyle="--", linewidth=1, label="chance")
    loss_ax.set(xlabel="meta-iteration", ylabel="training loss")
    acc_ax.set(xlabel="meta-iteration", ylabel="accuracy", ylim=(0, 1))
    acc_ax.legend(loc="lower right")
    figure.suptitle(title)
    return figure


def optimisation_history(points: Mapping[str, Sequence[tuple[int, float]]], title: str) -> Figure:
    """Each trial's best validation accuracy by trial number (one colour per family) and the best so far.

    ``points``: family -> (trial number, value) of its finished trials.
    """
    figure = Figure(figsize=(7, 4), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    everything = sorted(p for family_points in points.values() for p in family_points)
    for family, family_points in points.items():
        if family_points:
            numbers, values = zip(*family_points, strict=True)
            ax.scatter(numbers, values, label=family, zorder=3)
    if everything:
        numbers, values = zip(*everything, strict=True)
        best = [max(values[: i + 1]) for i in range(len(values))]
        ax.step(numbers, best, where="post", color="black", linewidth=1, label="best so far")
    ax.set(xlabel="trial number (order drawn)", ylabel="best validation accuracy", ylim=(0, 1))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="lower right")
    ax.set_title(title)
    return figure


def parameter_importance(importances: Mapping[str, float], title: str) -> Figure:
    """Horizontal bars of each hyperparameter's importance (fANOVA share of the variance), largest on top."""
    ranked = sorted(importances.items(), key=lambda item: item[1])
    figure = Figure(figsize=(6, 1 + 0.4 * max(1, len(ranked))), layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    ax.barh([name for name, _ in ranked], [value for _, value in ranked])
    ax.set(xlabel="importance for validation accuracy", xlim=(0, 1))
    ax.set_title(title)
    return figure
