"""The registered model's format, in one place: how a learner checkpoint becomes an MLflow pyfunc
model, how it is logged (an MLflow 3 logged model of the run that trained it), and how its
learner is read back.

Layout: an MLflow pyfunc model from code (``deploy/pyfunc_entry.py``, so nothing pickled),
its ``learner`` artifact the checkpoint's ``learner.json`` and ``learner.pt``, the ``deploy``,
``learners`` and ``tasks`` packages as code (it loads without the project installed), pinned
requirements, a signature of the request rows (:mod:`deploy.request`) and a one-shot input
example. Reading goes through MLflow's own APIs (``download_artifacts`` of the model's URI,
``pyfunc.load_model``), never through the model's file layout or a store's.
"""

from __future__ import annotations

import base64
import importlib
import io
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deploy.packages import MODEL_PACKAGES
from learners.checkpoint import SPEC_FILE, WEIGHTS_FILE, load_learner

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModel
    from mlflow.models import Model, ModelSignature

    from learners.base import Learner

LEARNER_ARTIFACT = "learner"  # a directory holding learner.json and learner.pt
REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "pillow")
ENTRY_POINT = Path(__file__).with_name("pyfunc_entry.py")
MODEL_TYPE = "learn2tune-few-shot"  # the logged model's type, to search and compare them in MLflow


class NotAFewShotModel(ValueError):
    """The model loads, but it is not a :class:`deploy.fewshot_model.FewShotModel`."""


def save_model(checkpoint: Path, model_dir: Path, mlflow_model: Model | None = None) -> None:
    """Write the pyfunc model of the learner checkpoint in ``checkpoint`` to ``model_dir`` (new);
    ``mlflow_model`` carries the ids of the logged model it will be uploaded to."""
    import mlflow.pyfunc

    learner, _ = load_learner(checkpoint)  # a checkpoint that does not load is not saved
    with tempfile.TemporaryDirectory(prefix="learn2tune-learner-") as tmp:
        learner_dir = Path(tmp) / LEARNER_ARTIFACT
        learner_dir.mkdir()
        for filename in (SPEC_FILE, WEIGHTS_FILE):
            shutil.copy2(checkpoint / filename, learner_dir / filename)
        mlflow.pyfunc.save_model(
            path=str(model_dir),
            python_model=str(ENTRY_POINT),
            artifacts={LEARNER_ARTIFACT: str(learner_dir)},
            code_paths=[_package_dir(package) for package in MODEL_PACKAGES],
            pip_requirements=_requirements(),
            signature=_signature(),
            input_example=_input_example(learner.image_shape, learner.ways),
            mlflow_model=mlflow_model,
        )


def log_model(client: MlflowClient, run_id: str, checkpoint: Path, name: str) -> LoggedModel:
    """The model of ``checkpoint`` as an MLflow 3 logged model named ``name``, produced by run
    ``run_id`` (the run's Models column and the experiment's Models tab show it); READY once
    its files are uploaded. Register a version from ``models:/<model_id>``.

    What ``mlflow.pyfunc.log_model`` does, through ``client`` only: that function reads the
    process-wide tracking URI, which the stages never set (several stores may be in use).
    """
    from mlflow.entities import LoggedModelOutput, LoggedModelStatus
    from mlflow.models import Model

    run = client.get_run(run_id)
    model = client.create_logged_model(
        run.info.experiment_id, name=name, source_run_id=run_id, params=run.data.params, model_type=MODEL_TYPE
    )
    try:
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        with tempfile.TemporaryDirectory(prefix="learn2tune-model-") as tmp:
            model_dir = Path(tmp) / name
            ids = Model(artifact_path=model.artifact_location, model_uuid=model.model_id, run_id=run_id,
                        model_id=model.model_id)  # fmt: skip
            save_model(checkpoint, model_dir, ids)
            client.log_model_artifacts(model.model_id, str(model_dir))
    except BaseException:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    return client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)


def load_model_learner(model_uri: str, tracking_uri: str, device: Any = "cpu") -> Learner:
    """The learner inside the model at ``model_uri``, loaded the way the scoring server loads it,
    then moved to ``device``.

    ``model_uri`` is an artifact URI MLflow downloads with ``tracking_uri`` (a registered version's
    ``MlflowClient.get_model_version_download_uri``, a run's artifact URI, a local path).
    MLflow 3.17 resolves ``models:/`` URIs with the process-wide registry URI only, whatever
    ``registry_uri`` says, so those are resolved by the caller's client instead.

    Raises ``MlflowException`` or ``OSError`` when the model cannot be fetched or loaded,
    :class:`NotAFewShotModel` when it is another kind of model.
    """
    import mlflow.artifacts
    import mlflow.pyfunc

    from deploy.fewshot_model import FewShotModel

    with tempfile.TemporaryDirectory(prefix="learn2tune-model-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp, tracking_uri=tracking_uri)
        model = mlflow.pyfunc.load_model(local).unwrap_python_model()
    if not isinstance(model, FewShotModel):
        raise NotAFewShotModel(f"{model_uri} is not a learn2tune few-shot model")
    return model.learner.to(device)


def _package_dir(name: str) -> str:
    return next(iter(importlib.import_module(name).__path__))


def _requirements() -> list[str]:
    """Pinned explicitly: MLflow's own inference of them takes seconds."""
    from importlib.metadata import version

    return [f"{dist}=={version(dist).split('+')[0]}" for dist in REQUIREMENTS]


def _signature() -> ModelSignature:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    return ModelSignature(
        inputs=Schema(
            [ColSpec("string", "role"), ColSpec("string", "label", required=False), ColSpec(AnyType(), "image")]
        ),
        outputs=Schema([ColSpec("string", "label"), ColSpec(AnyType(), "probabilities"), ColSpec("string", "notes")]),
    )


def _input_example(image_shape: tuple[int, ...], ways: int) -> pd.DataFrame:
    """A ``ways``-way one-shot request with one query: base64 PNGs of the model's size."""
    import pandas as pd
    from PIL import Image

    channels, height, width = image_shape
    rows = []
    for index in range(ways + 1):
        role, label = ("support", f"class-{index}") if index < ways else ("query", None)
        fill = 255 * (index % ways) // max(1, ways - 1)
        pixels = np.full((height, width) if channels == 1 else (height, width, 3), fill, dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        rows.append({"role": role, "label": label, "image": base64.b64encode(buffer.getvalue()).decode()})
    return pd.DataFrame(rows)
