"""The learning-curve figure logged to each trial's MLflow run (Agg backend, no pyplot state)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


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
