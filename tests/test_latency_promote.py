"""The cost figures' parts without a pipeline: the Pareto front, the standard request, the timing
and the version tags (the registry, promote and the search's plot: tests/test_pipeline_e2e.py)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pipeline.model_cost import ModelCost, standard_request, time_calls
from pipeline.pareto import pareto_front


def test_pareto_front_keeps_the_points_nothing_beats_on_both_accuracy_and_latency():
    points = [(0.9, 10.0), (0.8, 2.0), (0.85, 12.0), (0.6, 1.0), (0.6, 1.5), (0.9, 10.0), (0.95, 50.0)]
    # (0.85, 12) is beaten by (0.9, 10); (0.6, 1.5) by (0.6, 1); the repeated (0.9, 10) both stay
    assert pareto_front(points) == [0, 1, 3, 5, 6]
    assert pareto_front([]) == []
    assert pareto_front([(0.5, 3.0)]) == [0]


def test_standard_request_is_five_way_five_shot_with_75_queries_of_the_models_shape():
    request = standard_request((3, 28, 28))
    assert request.support.shape == (25, 3, 28, 28) and request.query.shape == (75, 3, 28, 28)
    assert request.support.dtype == np.uint8 and request.images == "synthetic"
    assert list(np.bincount(request.support_labels)) == [5] * 5
    assert request.describe() == "5-way 5-shot + 75 queries"
    frame = request.frame()
    assert list(frame["role"]).count("support") == 25 and len(frame) == 100
    support_x, support_y, query_x = request.tensors()
    assert support_x.shape == (1, 25, 3, 28, 28) and support_y.shape == (1, 25) and query_x.shape == (1, 75, 3, 28, 28)
    assert float(support_x.max()) <= 1.0
    assert standard_request((1, 28, 28), ways=3).describe() == "3-way 5-shot + 45 queries"


def test_time_calls_counts_only_the_timed_calls_and_orders_its_percentiles():
    calls = []
    timing = time_calls(lambda: calls.append(sum(range(1000))), calls=50, warmup=4)
    assert len(calls) == 54 and timing.calls == 50
    assert 0.0 < timing.p50_ms <= timing.p95_ms
    budgeted = time_calls(lambda: time.sleep(0.01), calls=50, warmup=0, budget_s=0.03)
    assert budgeted.calls == 5  # the minimum a budget leaves, though 3 calls spend it
    assert time_calls(lambda: None, calls=7, warmup=0, budget_s=10.0).calls == 7


def test_cost_tags_round_trip_and_a_version_without_them_has_none():
    cost = ModelCost(1234, 5678, 1.25, 2.5, 50, "5-way 5-shot + 75 queries (synthetic)", "cpu x, 2 cores")
    tags = cost.to_tags()
    assert tags["model.params"] == "1234" and tags["latency.p95_ms"] == "2.500"
    assert ModelCost.from_tags(tags) == cost
    assert ModelCost.from_tags({"family": "protonet"}) is None
    assert "1,234 parameters" in cost.describe()


@pytest.mark.parametrize("bad", ["0", "-1"])
def test_a_bound_that_is_not_positive_is_refused_in_the_config_and_as_a_flag(bad, tmp_path, capsys):
    from pipeline.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(f"name: c\nworkdir: {tmp_path}\nregistry: {{max_latency_ms: {bad}}}\n")
    assert main(["promote", str(config)]) == 2
    assert "registry.max_latency_ms" in capsys.readouterr().err
    config.write_text(f"name: c\nworkdir: {tmp_path}\ntracking: {{uri: 'sqlite:///{tmp_path}/m.db'}}\n")
    assert main(["promote", str(config), "--max-params", bad]) == 2
    assert "--max-params must be a positive number" in capsys.readouterr().err


def test_register_needs_at_least_five_timed_calls(tmp_path, capsys):
    from pipeline.cli import main

    config = tmp_path / "c.yaml"
    config.write_text(f"name: c\nworkdir: {tmp_path}\nregistry: {{latency_calls: 2}}\n")
    assert main(["register", str(config)]) == 2
    assert "registry.latency_calls" in capsys.readouterr().err
