"""MLflow models-from-code entry point: ``log_model(python_model=<this file>)`` records it and
MLflow runs it when the model loads (so no pickled object is stored). Not for importing."""

from mlflow.models import set_model

from deploy.fewshot_model import FewShotModel

set_model(FewShotModel())
