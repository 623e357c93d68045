"""The register stage: the evaluated winner as an MLflow pyfunc model version, alias ``candidate``.

Reads ``evaluation.json`` and the winner's checkpoint (downloaded first from an object store);
saves the :class:`deploy.fewshot_model.FewShotModel` (weights and learner spec as artifacts,
the project's packages as code, so it loads without the project installed), logs it under the
winning trial's run, registers it as ``registry.model_name`` and tags the version with what it
is and how it scored. Only an explicit MlflowClient is used (no fluent tracking-URI state).
"""

from __future__ import annotations

import base64
import io
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from deploy.packages import MODEL_PACKAGES
from learners.checkpoint import SPEC_FILE, WEIGHTS_FILE, load_learner
from pipeline import tracking
from pipeline.config import Config
from pipeline.errors import PipelineError
from pipeline.evaluate import read_evaluation
from tasks import storage
from tasks.say import Say as Out

ALIAS = "candidate"
MODEL_ARTIFACT_PATH = "model"


def register(config: Config, out: Out) -> dict[str, Any]:
    """Register the evaluation's winner; returns name, version, alias and model URI."""
    evaluation = read_evaluation(config)
    winner = next(m for m in evaluation["models"] if m["trial_id"] == evaluation["winner"])
    location = storage.resolve(winner["checkpoint"], config.storage.endpoint_url)
    missing = f"the winner's checkpoint {location} is missing {SPEC_FILE} or {WEIGHTS_FILE}"
    if not location.is_dir():
        raise PipelineError(missing)
    client = tracking.make_client(config.tracking.uri)
    primary = winner["results"][evaluation["primary"]]
    name = config.registry.model_name

    with storage.local_copy(location, "learn2tune-ckpt-") as checkpoint:  # downloaded when remote
        if not (checkpoint / SPEC_FILE).is_file() or not (checkpoint / WEIGHTS_FILE).is_file():
            raise PipelineError(missing)
        learner, _ = load_learner(checkpoint)
        with tempfile.TemporaryDirectory(prefix="learn2tune-model-") as tmp:
            model_dir = Path(tmp) / MODEL_ARTIFACT_PATH
            save_pyfunc_model(checkpoint, learner, model_dir)
            client.log_artifacts(winner["run_id"], str(model_dir), MODEL_ARTIFACT_PATH)
    tags = {
        "family": winner["family"],
        "trial_id": winner["trial_id"],
        "experiment": evaluation["experiment"],
        "dataset_fingerprint": evaluation["dataset"]["fingerprint"],
        "ways": primary["ways"],
        "shots": primary["shots"],
        "test_accuracy": f"{primary['accuracy']:.4f}",
        "test_ci95": f"{primary['ci95']:.4f}",
        "test_episodes": evaluation["test_episodes"]["episodes"],
        "val_accuracy": f"{winner['val_accuracy']:.4f}",
        "selection": evaluation["selection"],
    }
    _ensure_registered_model(client, name)
    source = f"{client.get_run(winner['run_id']).info.artifact_uri}/{MODEL_ARTIFACT_PATH}"
    version = client.create_model_version(
        name, source, run_id=winner["run_id"], tags={k: str(v) for k, v in tags.items()}
    ).version
    client.set_registered_model_alias(name, ALIAS, version)
    parent_run_id = evaluation["mlflow"]["parent_run_id"]
    client.set_tag(parent_run_id, "learn2tune.registered_model", f"{name} version {version} @{ALIAS}")
    registered = {"name": name, "version": version, "alias": ALIAS, "model_uri": f"models:/{name}@{ALIAS}"}
    out(
        f"registered {winner['family']} trial {winner['trial_id']} as {name} version {version} "
        f"(alias {ALIAS}; {evaluation['primary']} test accuracy {primary['accuracy']:.4f} ± {primary['ci95']:.4f})"
    )
    return registered


def save_pyfunc_model(checkpoint: Path, learner, model_dir: Path) -> None:
    """Write the MLflow pyfunc model of the learner checkpoint in ``checkpoint`` to ``model_dir``."""
    import mlflow

    from deploy.fewshot_model import LEARNER_ARTIFACT

    with tempfile.TemporaryDirectory(prefix="learn2tune-learner-") as tmp:
        learner_dir = Path(tmp) / LEARNER_ARTIFACT
        learner_dir.mkdir()
        for filename in (SPEC_FILE, WEIGHTS_FILE):
            shutil.copy2(checkpoint / filename, learner_dir / filename)
        mlflow.pyfunc.save_model(
            path=str(model_dir),
            python_model=str(_package_dir("deploy") / "pyfunc_entry.py"),
            artifacts={LEARNER_ARTIFACT: str(learner_dir)},
            code_paths=[str(_package_dir(package)) for package in MODEL_PACKAGES],
            pip_requirements=_requirements(),
            signature=_signature(),
            input_example=_input_example(learner.image_shape, learner.ways),
        )


def _ensure_registered_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="A few-shot classifier from learn2tune")


def _package_dir(name: str) -> Path:
    import importlib

    file = importlib.import_module(name).__file__
    assert file is not None, f"{name} is a regular package (it has an __init__.py)"
    return Path(file).parent


def _requirements() -> list[str]:
    """Pinned explicitly: MLflow's own inference of them takes seconds."""
    from importlib.metadata import version

    return [f"{dist}=={version(dist).split('+')[0]}" for dist in ("mlflow", "torch", "numpy", "pandas", "pillow")]


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    return ModelSignature(
        inputs=Schema(
            [ColSpec("string", "role"), ColSpec("string", "label", required=False), ColSpec(AnyType(), "image")]
        ),
        outputs=Schema(
            [ColSpec("string", "label"), ColSpec(AnyType(), "probabilities"), ColSpec("string", "notes")]
        ),
    )


def _input_example(image_shape: tuple[int, int, int], ways: int):
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
