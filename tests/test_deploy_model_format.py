"""The model format, on its own: a learner checkpoint saved as the project's pyfunc model and read
back through MLflow (download, ``pyfunc.load_model``) gives the same learner. A local directory;
no tracking store, no server."""

from __future__ import annotations

from pathlib import Path

import torch
from mlflow.models import Model

from deploy.model_format import LEARNER_ARTIFACT, load_model_learner, save_model
from learners.checkpoint import build_learner, save_learner


def test_saved_model_reads_back_as_the_same_learner(tmp_path: Path):
    torch.manual_seed(0)
    learner = build_learner({"family": "protonet", "hparams": {"width": 8}, "image_shape": [1, 28, 28], "ways": 3})
    save_learner(learner, tmp_path / "checkpoint")
    save_model(tmp_path / "checkpoint", tmp_path / "model")

    flavor = Model.load(str(tmp_path / "model")).flavors["python_function"]
    assert set(flavor["artifacts"]) == {LEARNER_ARTIFACT}
    assert sorted(p.name for p in (tmp_path / "model" / flavor["code"]).iterdir()) == ["deploy", "learners", "tasks"]

    loaded = load_model_learner(str(tmp_path / "model"), tracking_uri=f"sqlite:///{tmp_path}/unused.db")
    assert type(loaded) is type(learner) and loaded.ways == 3
    mine, theirs = learner.state_dict(), loaded.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
