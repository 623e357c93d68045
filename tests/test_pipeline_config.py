"""Config validation: unknown keys, bad values, cross-field rules, registry-backed checks, resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_config, parse_assignment, parse_scalar
from pipeline.errors import ConfigError


def load(tmp_path: Path, text: str | None = None, *sets: str, environ: dict | None = None):
    path = None
    if text is not None:
        path = tmp_path / "config.yaml"
        path.write_text(text)
    overrides = [parse_assignment(s) for s in sets]
    return load_config(path, overrides, cwd=tmp_path, environ=environ or {})


def error(tmp_path: Path, text: str | None = None, *sets: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, *sets)
    return str(info.value)


def test_three_line_file_gets_every_default_resolved(tmp_path):
    config = load(tmp_path, "name: tiny\nsearch:\n  trials: 2\n")
    assert config.search.trials == 2 and config.search.max_iterations == 400
    assert config.data.dir == str(tmp_path / "runs" / "datasets" / "tiny")
    assert config.experiment_dir == tmp_path / "runs" / "tune" / "tiny"
    assert config.tracking.uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert config.tracking.experiment == "tiny" and config.registry.model_name == "tiny"
    assert config.data.seed == config.seed == 0


def test_unknown_key_names_the_field_and_suggests(tmp_path):
    message = error(tmp_path, "search:\n  familes: [maml]\n")
    assert message == "config error: search.familes is not a field; did you mean search.families?"
    assert "episodes.train.wayz is not a field; did you mean episodes.train.ways?" in error(
        tmp_path, None, "episodes.train.wayz=5"
    )
    assert "allowed: name, seed" in error(tmp_path, "zzzzzz: 1\n")


@pytest.mark.parametrize(
    "assignment, expected",
    [
        ("episodes.train.ways=five", "episodes.train.ways must be an integer >= 2, got 'five'"),
        ("episodes.train.ways=1", "episodes.train.ways must be an integer >= 2, got 1"),
        ("search.resources.gpu=-1", "search.resources.gpu must be a number >= 0, got -1"),
        ("search.resources.cpu=0", "search.resources.cpu must be a number > 0, got 0"),
        ("device=tpu", "device must be one of 'auto', 'cpu', 'cuda', got 'tpu'"),
        ("data.rotations=maybe", "data.rotations must be true or false, got 'maybe'"),
        ("name=has space", "name must be a name of letters"),
        (
            "episodes.test.ways=[5, x]",
            "episodes.test.ways must be a non-empty list, each an integer >= 2, got [5, 'x']",
        ),
        ("search.grace_iterations=500", "search.grace_iterations (500) must be <= search.max_iterations (400)"),
        ("search.checkpoint_every=75", "must be a multiple of search.eval_every (50)"),
        ("search.grace_iterations=1.5", "search.grace_iterations must be a count of meta-iterations (an integer) or"),
        ("data.channels=2", "data.channels must be 1, 3, auto or null (source default), got 2"),
        ("data.channels=true", "data.channels must be 1, 3, auto or null (source default), got True"),
        ("data.image_size=2", "data.image_size must be an int in [4, 1024], got 2"),
        ("search.max_concurrent=0", "search.max_concurrent must be null or an integer >= 1, got 0"),
        ("search.grace_iterations=true", "search.grace_iterations must be null or a number > 0, got True"),
        ("ray.env_vars=[1x]", "ray.env_vars must be a list, each an environment variable name"),
        ("data.skip_unreadable=sometimes", "data.skip_unreadable must be true or false, got 'sometimes'"),
        ("episodes=3", "episodes must be a mapping, got 3"),
    ],
)
def test_bad_values_name_the_field_and_what_is_allowed(tmp_path, assignment, expected):
    assert expected in error(tmp_path, None, assignment)


def test_lists_accept_a_single_value_and_all_families(tmp_path):
    from learners.registry import family_names

    config = load(tmp_path, None, "episodes.test.ways=20", "search.families=all")
    assert config.episodes.test.ways == (20,)
    assert config.search.families == tuple(family_names())


def test_unknown_family_is_rejected_with_the_choices(tmp_path):
    message = error(tmp_path, "search:\n  families: [protonet, siamesee]\n")
    assert "search.families: unknown learner family 'siamesee'; choose from: 'all', protonet" in message


def test_fixed_hyperparameters_are_checked_against_the_family(tmp_path):
    message = error(tmp_path, "search:\n  fixed: {protonet: {inner_steps: 1}}\n")
    assert message.startswith("config error: search.fixed.protonet: protonet has no hyperparameter 'inner_steps'")
    assert "allowed:" in message
    assert "search.fixed.nope: unknown learner family" in error(tmp_path, None, "search.fixed.nope.x=1")


@pytest.mark.parametrize(
    "assignment, expected",
    [
        ("search.fixed.maml.path=bogus", "search.fixed.maml: maml.path must be 'auto' or one of loop, vmap,"),
        ("search.fixed.maml.downsample=avg", "search.fixed.maml: maml.downsample must be one of pool, stride"),
        ("search.fixed.maml.inner_steps=0", "search.fixed.maml: maml.inner_steps must be >= 1, got 0"),
        ("search.fixed.mann.read_heads=200", "search.fixed.mann: mann.read_heads (200) must not exceed memory_slots"),
    ],
)
def test_fixed_values_are_checked_by_the_familys_own_validate(tmp_path, assignment, expected):
    assert error(tmp_path, None, assignment).startswith(f"config error: {expected}")


def test_a_fixed_value_that_rules_out_a_searched_bound_is_refused(tmp_path):
    message = error(tmp_path, "search:\n  families: [metasgd]\n  fixed: {metasgd: {alpha_low: 0.05}}\n")
    assert message == (
        "config error: the search space of metasgd.alpha_high (Float(low=0.01, high=0.5, log=True)) with "
        "search.fixed.metasgd: metasgd.alpha_high must be >= alpha_low (0.05), got 0.01"
    )
    load(tmp_path, "search:\n  families: [metasgd]\n  fixed: {metasgd: {alpha_low: 0.01}}\n")  # the lowest bound: fine


@pytest.mark.parametrize(
    "search, expected",
    [
        (
            "families: [protonet]\n  points_to_evaluate: {maml: {inner_lr: 0.4}}",
            "search.points_to_evaluate.maml: 'maml' is not searched; search.families is protonet",
        ),
        (
            "families: [maml]\n  points_to_evaluate: {maml: {inner_lr: 0.4, test_inner_steps: 3}}",
            "search.points_to_evaluate.maml.test_inner_steps: not a searched hyperparameter of maml",
        ),
        (
            "families: [maml]\n  fixed: {maml: {inner_lr: 0.4}}\n  points_to_evaluate: {maml: {inner_lr: 0.4}}",
            "search.points_to_evaluate.maml.inner_lr: not a searched hyperparameter of maml (fixed ones",
        ),
        (
            "families: [maml]\n  points_to_evaluate: {maml: {inner_lr: 40.0}}",
            "search.points_to_evaluate.maml.inner_lr: 40.0 is outside its search space Float(",
        ),
        (
            "families: [maml]\n  points_to_evaluate: {maml: {width: 48}}",
            "search.points_to_evaluate.maml.width: 48 is outside its search space Choice(",
        ),
        (
            "families: [maml]\n  points_to_evaluate: {maml: 0.4}",
            "search.points_to_evaluate.maml must be a mapping of searched hyperparameters, got 0.4",
        ),
    ],
)
def test_points_to_evaluate_name_searched_knobs_inside_their_space(tmp_path, search, expected):
    assert error(tmp_path, f"search:\n  {search}\n").startswith(f"config error: {expected}")


def test_file_problems_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file .* does not exist"):
        load_config(tmp_path / "nope.yaml", cwd=tmp_path, environ={})
    assert "is not valid YAML (line 3)" in error(tmp_path, "name: a\nsearch: [\n")
    assert "must hold a mapping of sections" in error(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="--set expects section.key=value"):
        parse_assignment("search.trials")


def test_tracking_uri_from_environment_and_relative_paths_made_absolute(tmp_path):
    config = load(tmp_path, None, environ={"MLFLOW_TRACKING_URI": "sqlite:///other/x.db"})
    assert config.tracking.uri == f"sqlite:///{tmp_path}/other/x.db"
    config = load(tmp_path, None, "tracking.uri=http://mlflow.internal:5000", "workdir=/abs/w", "data.dir=d")
    assert config.tracking.uri == "http://mlflow.internal:5000"
    assert config.workdir == "/abs/w" and config.data.dir == str(tmp_path / "d")


def test_exponent_floats_read_as_numbers_as_in_yaml_1_2(tmp_path):
    # PyYAML (YAML 1.1) alone reads `1e-3` as the string "1e-3"; a learning rate is written so.
    (tmp_path / "lr.yaml").write_text("search: {fixed: {maml: {inner_lr: 1e-3, meta_lr: 2E+1}}}\n")
    config = load_config(tmp_path / "lr.yaml", cwd=tmp_path, environ={})
    assert config.search.fixed["maml"] == {"inner_lr": 0.001, "meta_lr": 20.0}
    assert parse_scalar("5e-4") == 0.0005 and parse_scalar("1e") == "1e"


def test_grace_period_scales_with_max_iterations(tmp_path):
    assert load(tmp_path).search.grace_iterations == 100  # a quarter of the default 400, as before
    assert load(tmp_path, None, "search.max_iterations=60", "search.eval_every=10").search.grace_iterations == 15
    assert (
        load(
            tmp_path, None, "search.grace_iterations=0.5", "search.max_iterations=60", "search.eval_every=10"
        ).search.grace_iterations
        == 30
    )
    quickstart = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
    assert load_config(quickstart, cwd=tmp_path, environ={}).search.grace_iterations == 100  # make run unchanged
    small = load_config(quickstart, [("search.max_iterations", 60)], cwd=tmp_path, environ={})
    assert small.search.grace_iterations == 20


def test_storage_uris_stay_uris_and_take_the_endpoint_from_the_environment(tmp_path):
    config = load(tmp_path, None, "workdir=s3://bucket/l2t/", environ={"AWS_ENDPOINT_URL": "http://minio:9000"})
    assert config.workdir == "s3://bucket/l2t" and config.data.dir == "s3://bucket/l2t/datasets/quickstart"
    assert config.storage.endpoint_url == "http://minio:9000"  # resolved once, for nodes without the variable
    assert config.experiment_location.uri == "s3://bucket/l2t/tune/quickstart"
    assert config.experiment_location.path == "bucket/l2t/tune/quickstart" and not config.experiment_location.local
    override = load(tmp_path, None, "storage.endpoint_url=http://s3.local", environ={"AWS_ENDPOINT_URL": "http://x"})
    assert override.storage.endpoint_url == "http://s3.local"
    assert error(tmp_path, None, "data.dir=hdfs://cluster/data") == (
        "config error: data.dir: unsupported storage scheme 'hdfs' in 'hdfs://cluster/data'; "
        "use a local path, s3://bucket/prefix or gs://bucket/prefix"
    )
    assert "names no bucket" in error(tmp_path, None, "workdir=s3:///l2t")
