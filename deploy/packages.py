"""The project's own packages, as code that travels: a saved model carries what it imports when
loaded, and trials on the nodes of a Ray cluster get the whole project."""

from __future__ import annotations

MODEL_PACKAGES = ("tasks", "learners", "deploy")  # what the pyfunc model imports when loaded
PROJECT_PACKAGES = (*MODEL_PACKAGES, "pipeline")  # what a trial imports
