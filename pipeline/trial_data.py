"""How a trial gets its dataset (``search.data``): one call, :func:`trial_dataset`, two paths.

- ``object-store``: the driver puts each split the trials use into Ray's object store once
  (:func:`share_dataset`); every trial on a node maps that node's one copy: zero-copy numpy
  arrays, read-only (the sampler only gathers from them), and no trial reads the driver's disk.
- ``storage``: every trial opens the dataset itself, a private in-memory copy per trial.

``learn2tune bench data-sharing`` measures both side by side.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.config import Config
from pipeline.datasets import open_dataset
from pipeline.errors import PipelineError
from tasks.errors import DatasetError
from tasks.store import DatasetStore, SplitStore

TRIAL_SPLITS = ("train", "val")  # what a trial trains and validates on; test stays with the driver


class TrialDataset(Protocol):
    """What a trial reads: the image shape and its splits."""

    @property
    def image_shape(self) -> tuple[int, int, int]: ...

    def split(self, name: str) -> SplitStore: ...


@dataclass(frozen=True)
class SharedDataset:
    """A dataset's trial splits in Ray's object store, as the driver hands them to every trial."""

    path: str  # where the driver read it, for messages
    image_shape: tuple[int, int, int]
    refs: Mapping[str, Any]  # split name -> ray.ObjectRef of its SplitStore

    def split(self, name: str) -> SplitStore:
        """Split ``name`` mapped from this node's object store (no copy; the arrays are read-only)."""
        import ray

        if name not in self.refs:
            raise DatasetError(
                f"split {name!r} of dataset {self.path} is not in the object store (shared: {', '.join(self.refs)})"
            )
        return ray.get(self.refs[name])


def share_dataset(store: DatasetStore) -> SharedDataset:
    """Put the trial splits of ``store`` into Ray's object store once (Ray must be connected);
    :class:`PipelineError` if they cannot fit. The objects live as long as the returned value
    (or a trial holding it) does."""
    import ray

    loaded = {name: store.split(name) for name in TRIAL_SPLITS}
    needed = sum(split.images.nbytes for split in loaded.values())
    capacity = _object_store_capacity()
    if needed > capacity:
        raise PipelineError(
            f"search.data is object-store but the trial splits of {store.path} ({needed / 2**30:.2f} GiB) do not "
            f"fit this node's Ray object store ({capacity / 2**30:.2f} GiB): use search.data=storage or start Ray "
            f"with a larger --object-store-memory"
        )
    refs = {name: ray.put(split) for name, split in loaded.items()}
    return SharedDataset(str(store.path), store.image_shape, refs)


def trial_dataset(config: Config, shared: SharedDataset | None) -> TrialDataset:
    """The dataset a trial trains on: the driver's object-store copy when there is one, else its own."""
    if shared is not None:
        return shared
    return open_dataset(config)  # from the storage URI


def _object_store_capacity() -> float:
    """The object store size of the node this process runs on, in bytes."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    node = next(n for n in ray.nodes() if n["NodeID"] == node_id)
    return float(node["Resources"].get("object_store_memory", 0.0))
