"""Search pieces: the conditional define-by-run space (real Optuna) and the resource check (real Ray)."""

from __future__ import annotations

import optuna
import pytest

from learners.registry import get_family
from pipeline.config import Resources
from pipeline.errors import PipelineError
from pipeline.ray_runtime import check_trial_resources
from pipeline.space import FAMILY_KEY, INDEX_KEY, define_by_run, trial_hparams


def test_space_is_conditional_on_the_family_and_leaves_fixed_knobs_out():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fixed = {"maml": {"inner_steps": 1}}
    space = define_by_run(("maml", "fomaml"), fixed)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for number in range(12):
        trial = study.ask()
        constants = space(trial)
        family = trial.params[FAMILY_KEY]
        seen.append(family)
        # the declared space less the fixed knobs; FOMAML's backbone is set (search.backbones: conv4 alone)
        expected = set(get_family(family).search_space) - set(fixed.get(family, {})) - {"backbone"}
        assert {k for k in trial.params if k != FAMILY_KEY} == {f"{family}.{k}" for k in expected}
        assert constants == {INDEX_KEY: number, **({"fomaml.backbone": "conv4"} if family == "fomaml" else {})}
        config = {**trial.params, **constants}
        hparams = trial_hparams(config, fixed)
        assert set(hparams) == expected | set(fixed.get(family, {})) | ({"backbone"} if family == "fomaml" else set())
        study.tell(trial, 0.5)
    assert set(seen[:2]) == {"maml", "fomaml"}  # each family once before the sampler decides


@pytest.mark.parametrize(
    "backbones, drawn, constant, searched, left_out",
    [
        (("conv4",), set(), "conv4", {"depth"}, {"backbone", "dropblock"}),  # before the registry: Conv-4 only
        (("resnet12",), set(), "resnet12", {"dropblock"}, {"backbone", "depth"}),
        (("conv4", "resnet12"), {"conv4", "resnet12"}, None, {"depth", "dropblock", "backbone"}, set()),
    ],
)
def test_search_backbones_decide_which_backbones_and_knobs_a_family_searches(
    backbones, drawn, constant, searched, left_out
):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = define_by_run(("protonet", "maml"), {}, None, backbones)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        constants = space(trial)
        if trial.params[FAMILY_KEY] == "protonet":
            names = {k.removeprefix("protonet.") for k in trial.params if k != FAMILY_KEY}
            assert searched <= names and not left_out & names
            hparams = trial_hparams({**trial.params, **constants}, {})
            seen.add(hparams["backbone"])
            assert constant is None or hparams["backbone"] == constant
        else:  # MAML does not search its backbone: it keeps its default, and Conv-4's depth
            assert "maml.backbone" not in trial.params and "maml.depth" in trial.params
            assert set(constants) == {INDEX_KEY}
        study.tell(trial, 0.5)
    assert seen == (drawn or {constant})


def test_points_to_evaluate_are_the_first_trials_of_their_families():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    paper = {"inner_lr": 0.4, "width": 32}
    space = define_by_run(("maml", "protonet"), {}, {"maml": paper})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = []
    for _ in range(4):
        trial = study.ask()
        space(trial)
        drawn.append(dict(trial.params))
        study.tell(trial, 0.5)
    point = drawn[1]  # queued by the first trial: maml's point (families in order), then the rest
    assert point[FAMILY_KEY] == "maml" and point["maml.inner_lr"] == 0.4 and point["maml.width"] == 32
    assert set(point) == {FAMILY_KEY} | {f"maml.{k}" for k in get_family("maml").search_space}
    assert drawn[0].get("maml.inner_lr") != 0.4  # the first trial is the sampler's own draw
    assert sum(p.get("maml.inner_lr") == 0.4 for p in drawn) == 1
    assert {p[FAMILY_KEY] for p in drawn[:3]} == {"maml", "protonet"}


def test_a_gpu_request_on_a_cpu_only_cluster_is_refused(pipeline_ray):
    check_trial_resources(Resources(cpu=1, gpu=0))
    with pytest.raises(PipelineError, match=r"search.resources.gpu asks for 0.5 GPU\(s\) per trial but the largest"):
        check_trial_resources(Resources(cpu=1, gpu=0.5))
    with pytest.raises(PipelineError, match=r"search.resources.cpu asks for 64 CPU\(s\)"):
        check_trial_resources(Resources(cpu=64, gpu=0))
