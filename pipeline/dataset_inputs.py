"""The dataset as MLflow run inputs (``mlflow.data``'s entities): the runs table's Dataset column.

One MLflow dataset per split, named ``<dataset>.<split>`` (MLflow keys datasets by name and
digest, and the splits share the digest), logged with context ``train``, ``validation`` or
``test``: the search's parent run and every trial run get train and validation, evaluate adds
test to the parent and to the trial runs it scores. Each carries its Parquet file's URI as
source, the dataset fingerprint as digest (its first :data:`DIGEST_LENGTH` hex digits, as
``build`` prints it; MLflow caps digests at 36 characters), the Parquet schema, and counts
(rows, classes, image shape, the whole fingerprint) as profile. Read from the manifest only:
no split is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.parquet_io import SCHEMA
from tasks.storage import Location

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import DatasetInput

CONTEXT_TAG = "mlflow.data.context"
CONTEXTS = {"train": "train", "val": "validation", "test": "test"}  # split -> MLflow context
SEARCH_SPLITS = ("train", "val")  # what the search trains and ranks on; test stays with evaluate
DIGEST_LENGTH = 12
COLUMN_TYPES = {"int32": "integer", "int64": "long", "string": "string", "binary": "binary"}  # pyarrow -> MLflow


@dataclass(frozen=True)
class SplitInput:
    """One split as an MLflow dataset input: plain fields, so it travels to the trials."""

    name: str
    digest: str
    source_type: str
    source: str  # JSON: {"uri": ...}
    schema: str  # JSON: {"mlflow_colspec": [...]}
    profile: str  # JSON counts
    context: str

    def entity(self) -> DatasetInput:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(self.name, self.digest, self.source_type, self.source, self.schema, self.profile)
        return DatasetInput(dataset, tags=[InputTag(CONTEXT_TAG, self.context)])


def split_inputs(manifest: Mapping[str, Any], location: Location, splits: Iterable[str]) -> list[SplitInput]:
    """The inputs of ``splits`` of the dataset at ``location`` whose manifest is ``manifest``."""
    fingerprint = manifest["fingerprint"]
    inputs = []
    for split in splits:
        entry = manifest["splits"][split]
        file = location.child(entry["file"])
        uri = Path(file.path).as_uri() if file.local else file.uri
        profile = {
            "num_rows": entry["images"],
            "classes": entry["classes"],
            "image_shape": manifest["image_shape"],
            "fingerprint": fingerprint,
        }
        inputs.append(
            SplitInput(
                name=f"{location.name}.{split}",
                digest=fingerprint[:DIGEST_LENGTH],
                source_type="local" if file.local else uri.split("://", 1)[0],
                source=json.dumps({"uri": uri}),
                schema=_schema_json(),
                profile=json.dumps(profile),
                context=CONTEXTS[split],
            )
        )
    return inputs


def search_inputs(manifest: Mapping[str, Any], location: Location) -> list[SplitInput]:
    """The inputs of a search's runs: train and validation."""
    return split_inputs(manifest, location, SEARCH_SPLITS)


def test_inputs(manifest: Mapping[str, Any], location: Location) -> list[SplitInput]:
    """The input evaluate adds to the runs it scores: test."""
    return split_inputs(manifest, location, ["test"])


def log_inputs(client: MlflowClient, run_ids: Iterable[str], inputs: Sequence[SplitInput]) -> None:
    """Log ``inputs`` on each run of ``run_ids`` (an input a run already has is kept once)."""
    entities = [split.entity() for split in inputs]
    for run_id in dict.fromkeys(run_ids):
        client.log_inputs(run_id, datasets=entities)


def _schema_json() -> str:
    """The split files' Parquet schema as MLflow column specs."""
    columns = [{"name": f.name, "type": COLUMN_TYPES.get(str(f.type), "string")} for f in SCHEMA]
    return json.dumps({"mlflow_colspec": columns})
