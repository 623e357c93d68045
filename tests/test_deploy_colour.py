"""A colour 84x84 model at serving: requests are converted to the model's three channels and the
answer says so; images in the model's own form pass as they are. The model is a ProtoNet (Conv-4
of 8 filters) for 3x84x84 synthetic colour glyphs, saved in the registered-model format; it is
read back as the scoring server reads it (``pyfunc.load_model``) and, in the slow test, served by
MLflow's scoring server over HTTP."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from deploy.client import request_body
from deploy.local_server import free_port, local_server
from deploy.model_format import save_model
from learners.checkpoint import build_learner, save_learner
from pipeline.serve import with_scripts_on_path
from tasks.synthetic import SyntheticSource

SHAPE = (3, 84, 84)


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory) -> Path:
    """The saved pyfunc model directory of an (untrained) 3-way colour ProtoNet."""
    root = tmp_path_factory.mktemp("colour-model")
    torch.manual_seed(0)
    learner = build_learner({"family": "protonet", "hparams": {"width": 8}, "image_shape": list(SHAPE), "ways": 3})
    save_learner(learner, root / "checkpoint")
    save_model(root / "checkpoint", root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def glyphs() -> list[tuple[str, np.ndarray]]:
    """Two colour glyphs (H x W x 3) of each of 3 classes, labelled by class."""
    source = SyntheticSource(classes=3, images_per_class=2, image_size=84, seed=4, channels=3)
    return [(f"class-{c}", image) for c in range(3) for image in source.class_images(c)]


def _frame(support: list[tuple[str, np.ndarray]], query: list[np.ndarray]) -> pd.DataFrame:
    body = request_body(support, query)["dataframe_split"]
    return pd.DataFrame(body["data"], columns=body["columns"])


def test_a_colour_model_takes_its_own_images_as_they_are_and_converts_grey_and_other_sizes(colour_model, glyphs):
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(str(colour_model))
    support = glyphs[0::2]
    own = model.predict(_frame(support, [image for _, image in support]))
    assert own["label"].tolist() == ["class-0", "class-1", "class-2"]  # a query equal to a support image
    assert set(own["notes"]) == {""}
    chw = [(label, image.transpose(2, 0, 1)) for label, image in support]  # C x H x W arrays: the same images
    assert model.predict(_frame(chw, [image for _, image in chw]))["label"].tolist() == own["label"].tolist()

    grey = [(label, image.mean(axis=2).astype(np.uint8)) for label, image in support]
    answer = model.predict(_frame(grey, [image for _, image in glyphs[1::2]]))
    assert answer["notes"][0] == "3 image(s) converted from L to RGB"
    small = [(label, image[::2, ::2]) for label, image in support]
    answer = model.predict(_frame(small, [glyphs[1][1]]))
    assert answer["notes"][0] == "3 image(s) resized from 42×42 to 84×84"


@pytest.mark.slow
def test_the_scoring_server_serves_the_colour_model_as_it_loads(colour_model, glyphs):
    """~15-40 s: MLflow's scoring server started on the saved model, one request of each kind."""
    import mlflow.pyfunc

    support, query = glyphs[0::2], [image for _, image in glyphs[1::2]]
    grey = [(label, image.mean(axis=2).astype(np.uint8)) for label, image in support]
    local = mlflow.pyfunc.load_model(str(colour_model))
    bin_dir = Path(sys.executable).parent
    port = free_port()
    command = [str(bin_dir / "mlflow"), "models", "serve", "--model-uri", str(colour_model), "--env-manager",
               "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    env = with_scripts_on_path({**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})
    with local_server(command, port, env=env) as client:
        for request_support in (support, grey):
            served = client.predict(request_support, query)
            expected = local.predict(_frame(request_support, query))
            assert [p.label for p in served] == expected["label"].tolist()
            assert [p.notes for p in served] == expected["notes"].tolist()
            for remote, probabilities in zip(served, expected["probabilities"], strict=True):
                assert remote.probabilities == pytest.approx(probabilities, abs=1e-6)
        assert served[0].notes == "3 image(s) converted from L to RGB"
