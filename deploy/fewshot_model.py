"""The registered model: an MLflow pyfunc that classifies query images given a labelled support set.

Input: one row per image (see :mod:`deploy.request`). Output: one row per query image, in
request order, with ``label`` (the predicted support label), ``probabilities`` (a dict,
label -> probability; MLflow's scoring server returns it as a JSON object) and ``notes`` (how
the request's images were converted to fit the model, e.g. resized; empty when none were).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc.model import PythonModel

from deploy.model_format import LEARNER_ARTIFACT
from deploy.request import RequestError, parse_episode
from learners.checkpoint import load_learner


class RequestRefused(MlflowException):
    """A malformed request (HTTP 400) whose message stays what is wrong with it.

    MLflow's scoring server prefixes the message of any MlflowException from ``predict`` with
    ``Failed to predict data '<the whole DataFrame>'`` (base64 images included) by assigning
    ``message``; that assignment is ignored here, so the client reads one line that names the row.
    """

    @property
    def message(self) -> str:
        return self.args[0]

    @message.setter
    def message(self, value: str) -> None:
        pass  # set by MlflowException.__init__ to the refusal itself (args[0]), later by the server


class FewShotModel(PythonModel):
    """Adapts on each request's support set and predicts its query images (CPU)."""

    def load_context(self, context: Any) -> None:
        self.learner, _ = load_learner(context.artifacts[LEARNER_ARTIFACT], "cpu")
        self.learner.eval()

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        try:
            episode = parse_episode(model_input, self.learner.image_shape)
            self.learner.check_ways(episode.ways)
        except (RequestError, ValueError) as exc:
            raise RequestRefused(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        support_x = _images(episode.support)
        support_y = torch.from_numpy(episode.support_labels)[None]
        query_x = _images(episode.query)
        logits = self.learner.predict(support_x, support_y, query_x)[0]
        probabilities = torch.softmax(logits.detach().float(), dim=-1).numpy()
        names = episode.class_names
        return pd.DataFrame(
            {
                "label": [names[i] for i in probabilities.argmax(axis=1)],
                "probabilities": [dict(zip(names, map(float, row), strict=True)) for row in probabilities],
                "notes": "; ".join(episode.notes),
            }
        )


def _images(array) -> torch.Tensor:
    """uint8 ``[n, C, H, W]`` -> float ``[1, n, C, H, W]`` in [0, 1], as the learners train on."""
    return torch.from_numpy(array).float().div_(255.0)[None]
