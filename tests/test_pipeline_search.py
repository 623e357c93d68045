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
        expected = set(get_family(family).search_space) - set(fixed.get(family, {}))
        assert {k for k in trial.params if k != FAMILY_KEY} == {f"{family}.{k}" for k in expected}
        assert constants == {INDEX_KEY: number}
        config = {**trial.params, **constants}
        hparams = trial_hparams(config, fixed)
        assert set(hparams) == expected | set(fixed.get(family, {}))
        study.tell(trial, 0.5)
    assert set(seen[:2]) == {"maml", "fomaml"}  # each family once before the sampler decides


def test_a_gpu_request_on_a_cpu_only_cluster_is_refused(pipeline_ray):
    check_trial_resources(Resources(cpu=1, gpu=0))
    with pytest.raises(PipelineError, match=r"search.resources.gpu asks for 0.5 GPU\(s\) per trial but the largest"):
        check_trial_resources(Resources(cpu=1, gpu=0.5))
    with pytest.raises(PipelineError, match=r"search.resources.cpu asks for 64 CPU\(s\)"):
        check_trial_resources(Resources(cpu=64, gpu=0))
