"""The bad-input matrix: the mistakes users make, and the one line each of them gets back.

``MISTAKES`` is the table (the README's troubleshooting section links here). A row says what
the user did, what they ran (a ``learn2tune`` command line, or a request to the registered
model as ``learn2tune serve`` passes it on) and a part of the one line they see. Every row
must end in exactly that line: for a command, ``learn2tune: error: ...`` on stderr with exit
status 2; for a request, the model's refusal (HTTP 400 from the scoring server). And every
row must leave the files as they were.

One tiny real pipeline run (build, search, evaluate, register) gives the rows a dataset, a
finished search and a registered 3-way MAML. In the table, ``{config}`` is that run's config
file, ``{root}`` its directory (dataset in ``{root}/dataset``, a second one built with another
seed in ``{root}/other``) and ``{tmp}`` a directory of the row's own, which ``setup`` fills
first (a damaged copy of the dataset is ``{tmp}/dataset``).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow.parquet as pq
import pytest
from csv_layout import write_layout
from PIL import Image

from deploy.client import encode_image, request_body
from pipeline.cli import main


@dataclass(frozen=True)
class Request:
    """A request to the registered model: one support image of each of ``classes`` classes
    (labels ``class-0``, ``class-1``, ...) then 4 query images; ``edit`` (row, column, value)
    changes one cell."""

    classes: int = 3
    edit: tuple[int, str, Any] | None = None


@dataclass(frozen=True)
class World:
    """The tiny run the rows work on."""

    root: Path
    fingerprints: tuple[str, str]  # of {root}/dataset and {root}/other
    model: Any  # registered version 1, loaded with mlflow.pyfunc.load_model
    support: list[tuple[str, np.ndarray]]  # 4 classes x 1 image from the test split
    query: list[np.ndarray]

    def places(self, tmp: Path) -> dict[str, str]:
        """What ``{config}``, ``{root}``, ``{tmp}``, ``{fingerprint}`` and ``{other_fingerprint}`` stand for."""
        fingerprint, other = self.fingerprints
        return {
            "config": str(self.root / "tiny.yaml"),
            "root": str(self.root),
            "tmp": str(tmp),
            "fingerprint": fingerprint,
            "other_fingerprint": other,
        }


Setup = Callable[[Path, World], object]  # what it returns is ignored


class Mistake(NamedTuple):
    """One row: what the user did, what they ran, and what they see."""

    id: str
    user_did: str
    command: str | Request  # `learn2tune ...`, or a request to the registered model
    sees: str  # part of the one line the user gets back
    setup: Setup | None = None  # fills {tmp} before the command


# ---------------------------------------------------------------- what setups put in {tmp}


def config_file(name: str, text: str) -> Setup:
    """``{tmp}/<name>`` holding ``text``."""
    return lambda tmp, world: (tmp / name).write_text(text)


def image_folder(classes: int, images: int, broken: str | None = None) -> Setup:
    """``{tmp}/images/class<c>/<i>.png``; the file ``broken`` (relative to it) is not an image."""

    def setup(tmp: Path, world: World) -> None:
        rng = np.random.default_rng(0)
        for c in range(classes):
            (tmp / "images" / f"class{c}").mkdir(parents=True)
            for i in range(images):
                pixels = rng.integers(0, 256, (12, 12), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp / "images" / f"class{c}" / f"{i}.png")
        if broken is not None:
            (tmp / "images" / broken).write_bytes(b"not a png")

    return setup


def csv_layout(change: Callable[[Path], object] = lambda root: None) -> Setup:
    """``{tmp}/mini``: the mini-ImageNet layout (tests/csv_layout.py) with 3 classes of 3 images per
    split, labels n01000007 ... n01000063, then ``change(root)``."""

    def setup(tmp: Path, world: World) -> None:
        write_layout(tmp / "mini", {"train": 3, "val": 3, "test": 3}, images=3)
        change(tmp / "mini")

    return setup


def append_line(name: str, line: str) -> Callable[[Path], object]:
    return lambda root: (root / name).write_text((root / name).read_text() + line + "\n")


def damaged(change: Callable[..., None], *args: str) -> Setup:
    """``{tmp}/dataset``: a copy of the run's dataset, then ``change(copy, *args)``."""
    return lambda tmp, world: change(shutil.copytree(world.root / "dataset", tmp / "dataset"), *args)


def cut_in_half(dataset: Path, name: str) -> None:
    data = (dataset / name).read_bytes()
    (dataset / name).write_bytes(data[: len(data) // 2])


def rename_column(dataset: Path, name: str, old: str, new: str) -> None:
    table = pq.read_table(dataset / name)
    pq.write_table(table.rename_columns([new if c == old else c for c in table.column_names]), dataset / name)


def recompress(dataset: Path, name: str) -> None:
    pq.write_table(pq.read_table(dataset / name), dataset / name, compression="snappy")


def copy_over(dataset: Path, source: str, target: str) -> None:
    shutil.copyfile(dataset / source, dataset / target)


def delete(dataset: Path, name: str) -> None:
    (dataset / name).unlink()


def edited_record(name: str, change: Callable[[dict], None]) -> Setup:
    """``{tmp}/runs/tune/tiny/<name>``: the run's stage record, then ``change(record)``."""

    def setup(tmp: Path, world: World) -> None:
        record = json.loads((world.root / "runs" / "tune" / "tiny" / name).read_text())
        change(record)
        (tmp / "runs" / "tune" / "tiny").mkdir(parents=True)
        (tmp / "runs" / "tune" / "tiny" / name).write_text(json.dumps(record))

    return setup


# ---------------------------------------------------------------- the table

SEARCH_COPY = "learn2tune search {config} --set data.dir={tmp}/dataset"
CSV_BUILD = "learn2tune build csv-split -c {config} --path {tmp}/mini --out {tmp}/out"
UNREACHABLE = "http://127.0.0.1:1"  # nothing listens on port 1: connection refused at once
STORE = "sqlite:///{root}/mlflow.db"

MISTAKES = [
    # --- config
    Mistake(
        "config-typo-in-set", "misspells a field in --set",
        "learn2tune search {config} --set search.trails=2",
        "config error: search.trails is not a field; did you mean search.trials?",
    ),
    Mistake(
        "config-typo-in-file", "misspells a field in the config file",
        "learn2tune search {tmp}/typo.yaml",
        "config error: episodes.train.way is not a field; did you mean episodes.train.ways?",
        config_file("typo.yaml", "episodes:\n  train: {way: 5}\n"),
    ),
    Mistake(
        "config-wrong-type", "gives a word where a number goes",
        "learn2tune search {config} --trials few",
        "config error: search.trials must be null or an integer >= 1, got 'few'",
    ),
    Mistake(
        "config-unknown-data-path", "names a way for trials to get the dataset that does not exist",
        "learn2tune search {config} --set search.data=nfs",
        "config error: search.data must be one of 'object-store', 'storage', got 'nfs'",
    ),
    Mistake(
        "config-study-storage-not-a-url", "gives a file name where the Optuna study's database URL goes",
        "learn2tune search {config} --set search.study_storage=optuna.db",
        "config error: search.study_storage must be a database URL such as sqlite:///optuna.db or "
        "postgresql://host/db, got 'optuna.db' (Could not parse SQLAlchemy URL from given URL string)",
    ),
    Mistake(
        "config-warm-start-unknown-experiment", "warm-starts a search from an experiment the tracking store lacks",
        "learn2tune search {config} --warm-start nope",
        "config error: search.warm_start names 'nope', not an MLflow experiment in this tracking store; it has: ",
    ),
    Mistake(
        "config-malformed-yaml", "leaves a brace open in the config file",
        "learn2tune search {tmp}/broken.yaml",
        "config error: {tmp}/broken.yaml is not valid YAML (line 3): expected ',' or '}}'",
        config_file("broken.yaml", "name: broken\nsearch: {trials: 2\n"),
    ),
    Mistake(
        "config-missing-file", "names a config file that does not exist",
        "learn2tune search {tmp}/missing.yaml",
        "config error: config file {tmp}/missing.yaml does not exist",
    ),
    Mistake(
        "config-set-without-value", "forgets the =value of --set",
        "learn2tune search {config} --set search.trials",
        "config error: --set expects section.key=value, got 'search.trials'",
    ),
    Mistake(
        "config-unknown-family", "names a learner family that does not exist",
        "learn2tune search {config} --families maml,nope",
        "config error: search.families: unknown learner family 'nope'; choose from: 'all', protonet,",
    ),
    Mistake(
        "config-family-typo", "misspells a learner family",
        "learn2tune search {config} --families mamll",
        "config error: search.families: unknown learner family 'mamll'; choose from: 'all', protonet,",
    ),
    Mistake(
        "config-family-typo-hint", "misspells a learner family and is told the likely one",
        "learn2tune search {config} --families mamll",
        "; did you mean 'maml'?",
    ),
    Mistake(
        "config-unknown-backbone", "names a backbone that is not registered",
        "learn2tune search {config} --backbones conv4,vgg16",
        "config error: search.backbones: unknown backbone 'vgg16'; choose from: 'all', conv4, resnet12",
    ),
    Mistake(
        "config-dropblock-under-maml", "asks MAML's functionally adapted network for DropBlock",
        "learn2tune search {config} --set search.fixed.maml.backbone=resnet12 --set search.fixed.maml.dropblock=0.1",
        "config error: search.fixed.maml: maml.dropblock must be 0 for the families that adapt their backbone "
        "functionally",
    ),
    Mistake(
        "config-unknown-source", "misspells the data source",
        "learn2tune build -c {config} --set data.source=omniglott",
        "config error: data.source must be one of synthetic, omniglot, folder, csv-split, got 'omniglott'; "
        "did you mean 'omniglot'?",
    ),
    Mistake(
        "config-fixed-unknown-path", "fixes a MAML formulation that does not exist",
        "learn2tune search {config} --set search.fixed.maml.path=bogus",
        "config error: search.fixed.maml: maml.path must be 'auto' or one of loop, vmap, split, split-vmap, "
        "split-compiled, got 'bogus'",
    ),
    Mistake(
        "config-fixed-unknown-choice", "fixes a downsampling MAML's network does not have",
        "learn2tune search {config} --set search.fixed.maml.downsample=avg",
        "config error: search.fixed.maml: maml.downsample must be one of pool, stride, got 'avg'",
    ),
    Mistake(
        "config-fixed-out-of-range", "fixes zero inner steps",
        "learn2tune search {config} --set search.fixed.maml.inner_steps=0",
        "config error: search.fixed.maml: maml.inner_steps must be >= 1, got 0",
    ),
    Mistake(
        "config-point-out-of-range", "gives the first trial an inner learning rate outside the search space",
        "learn2tune search {config} --set search.points_to_evaluate.maml.inner_lr=40.0",
        "config error: search.points_to_evaluate.maml.inner_lr: 40.0 is outside its search space Float(low=0.01,",
    ),
    Mistake(
        "config-fixed-rules-out-a-bound", "fixes Meta-SGD's lowest inner rate above the lowest one it searches",
        "learn2tune search {config} --families metasgd --set search.fixed.metasgd.alpha_low=0.05",
        "config error: the search space of metasgd.alpha_high (Float(low=0.01, high=0.5, log=True)) with "
        "search.fixed.metasgd: metasgd.alpha_high must be >= alpha_low (0.05), got 0.01",
    ),
    Mistake(
        "config-fixed-finetune-head", "fixes a test-time head the pre-train + fine-tune family does not have",
        "learn2tune search {config} --families finetune --set search.fixed.finetune.head=softmax",
        "config error: search.fixed.finetune: finetune.head must be one of linear, cosine, got 'softmax'",
    ),
    Mistake(
        "config-unknown-flag", "misspells a command-line flag",
        "learn2tune search {config} --trails 3",
        "unrecognized arguments: --trails 3 (see learn2tune --help)",
    ),
    # --- dataset sources
    Mistake(
        "source-not-built", "points data.dir at a dataset that was never built",
        "learn2tune search {config} --set data.dir={tmp}/nowhere",
        "dataset directory {tmp}/nowhere does not exist "
        "(build it first: `learn2tune build {config} --set data.dir={tmp}/nowhere`)",
    ),
    Mistake(
        "source-omniglot-without-zips", "builds Omniglot from a directory without its zips",
        "learn2tune build omniglot {config} --path {tmp}",
        "{tmp}: found neither images_background.zip nor an extracted images_background/ folder",
    ),
    Mistake(
        "source-folder-missing", "builds from an image folder that does not exist",
        "learn2tune build folder {config} --path {tmp}/photos",
        "image folder {tmp}/photos does not exist or is not a directory",
    ),
    Mistake(
        "source-folder-one-image-per-class", "builds from a folder with one image per class",
        "learn2tune build folder {config} --path {tmp}/images --out {tmp}/out",
        "image folder {tmp}/images: class 'class0' has only 1 image (10 of 10 classes have fewer than 2)",
        image_folder(classes=10, images=1),
    ),
    Mistake(
        "source-folder-too-few-classes", "builds from a folder with 3 classes (train, val and test need one each)",
        "learn2tune build folder {config} --path {tmp}/images --out {tmp}/out",
        "folder source {tmp}/images: split 'val' gets no classes out of 3 (data.val_classes=0.15",
        image_folder(classes=3, images=4),
    ),
    Mistake(
        "source-folder-broken-image", "has a file in the image folder that is not an image",
        "learn2tune build folder {config} --path {tmp}/images --out {tmp}/out",
        "{tmp}/images/class3/1.png: not a readable image",
        image_folder(classes=10, images=3, broken="class3/1.png"),
    ),
    Mistake(
        "source-folder-unreadable-skipped", "skips unreadable files (data.skip_unreadable), leaving a class one image",
        "learn2tune build folder {config} --path {tmp}/images --out {tmp}/out --set data.skip_unreadable=true",
        "image folder {tmp}/images: class 'class3' has only 1 image (1 of 10 classes have fewer than 2)",
        image_folder(classes=10, images=2, broken="class3/1.png"),
    ),
    Mistake(
        "source-folder-unreadable-hint", "has a file Pillow cannot read and does not skip unreadable files",
        "learn2tune build folder {config} --path {tmp}/images --out {tmp}/out",
        "; remove it, or set data.skip_unreadable: true to skip and count such files",
        image_folder(classes=10, images=3, broken="class3/1.png"),
    ),
    Mistake(
        "source-csv-missing", "builds the mini-ImageNet layout from a copy that lacks val.csv",
        CSV_BUILD,
        "{tmp}/mini: val.csv not found (expected images/ and train.csv, val.csv, test.csv of filename,label rows",
        csv_layout(lambda root: (root / "val.csv").unlink()),
    ),
    Mistake(
        "source-csv-listed-file-missing", "builds the mini-ImageNet layout with an image the CSV lists deleted",
        CSV_BUILD,
        "{tmp}/mini/images/n0100000700000001.png (listed in train.csv line 3) does not exist",
        csv_layout(lambda root: (root / "images" / "n0100000700000001.png").unlink()),
    ),
    Mistake(
        "source-csv-class-in-two-splits", "lists a training class in test.csv too",
        CSV_BUILD,
        "{tmp}/mini: class 'n01000007' is listed in train.csv line 2 and in test.csv line 11; a class belongs to one "
        "split (train or test)",
        csv_layout(append_line("test.csv", "n0100000700000009.png,n01000007")),
    ),
    Mistake(
        "source-csv-bad-header", "gives train.csv another header",
        CSV_BUILD,
        "{tmp}/mini/train.csv: the header is 'file,class', expected 'filename,label'",
        csv_layout(lambda root: (root / "train.csv").write_text("file,class\na.png,n1\n")),
    ),
    Mistake(
        "source-csv-bad-row", "has a row with a third field in val.csv",
        CSV_BUILD,
        "{tmp}/mini/val.csv line 11: expected two non-empty fields filename,label, got 'x.png,n01000028,extra'",
        csv_layout(append_line("val.csv", "x.png,n01000028,extra")),
    ),
    Mistake(
        "build-split-too-small-for-ways", "builds 14 classes whose val split (2) is too small for 3-way episodes",
        "learn2tune build folder {config} --path {tmp}/images --out {tmp}/out",
        "folder source {tmp}/images: split 'val' gets 2 classes but episodes.train (used for validation) asks for "
        "3-way episodes: set data.val_classes to 3 or more (now 0.15) or lower episodes.train.ways to 2",
        image_folder(classes=14, images=4),
    ),
    Mistake(
        "build-split-too-small-one-class", "builds 7 classes: val and test get one each, too few for any episode",
        "learn2tune build folder {config} --path {tmp}/images --out {tmp}/out",
        "split 'val' gets 1 class but episodes.train (used for validation) asks for 3-way episodes: lower "
        "episodes.train.ways and episodes.test.ways to 2 and give val and test 2 classes each (data.val_classes, "
        "data.test_classes), or add classes to the image source (the source's 7 classes are fewer than the 9",
        image_folder(classes=7, images=4),
    ),
    Mistake(
        "build-class-too-small-for-shots", "builds with test shots + query above the images each class has",
        "learn2tune build {config} --out {tmp}/out --set episodes.test.shots=[5]",
        "of split 'test' has 6 images but episodes.test asks for shots + query = 5 + 2 = 7 per class: "
        "lower episodes.test.query or episodes.test.shots so that shots + query <= 6",
    ),
    Mistake(
        "source-build-over-another-dataset", "builds with other settings into an existing dataset's directory",
        "learn2tune build {config} --set data.synthetic_classes=31",
        "output {root}/dataset holds a different dataset (fingerprint",
    ),
    # --- Parquet files and manifest
    Mistake(
        "parquet-truncated", "copied a dataset and the copy stopped half-way through train.parquet",
        SEARCH_COPY,
        "{tmp}/dataset/train.parquet: not a readable Parquet file",
        damaged(cut_in_half, "train.parquet"),
    ),
    Mistake(
        "parquet-wrong-schema", "rewrote train.parquet with the class column renamed",
        SEARCH_COPY,
        "{tmp}/dataset/train.parquet: wrong schema (label: int32, class_name: string, image: binary), "
        "expected columns (class: int32, class_name: string, image: binary)",
        damaged(rename_column, "train.parquet", "class", "label"),
    ),
    Mistake(
        "parquet-rewritten", "re-saved train.parquet (same rows, other compression)",
        SEARCH_COPY,
        "{tmp}/dataset/train.parquet: content differs from manifest.json",
        damaged(recompress, "train.parquet"),
    ),
    Mistake(
        "manifest-mismatch", "copied val.parquet over train.parquet",
        SEARCH_COPY,
        "{tmp}/dataset/train.parquet: has 24 rows, manifest.json says 120 images",
        damaged(copy_over, "val.parquet", "train.parquet"),
    ),
    Mistake(
        "manifest-missing", "copied a dataset without its manifest.json",
        SEARCH_COPY,
        "{tmp}/dataset/manifest.json not found: {tmp}/dataset is not a learn2tune dataset",
        damaged(delete, "manifest.json"),
    ),
    Mistake(
        "fingerprint-evaluate", "evaluates a search on a dataset built with other settings",
        "learn2tune evaluate {config} --set data.dir={root}/other",
        "the dataset in {root}/other (fingerprint {other_fingerprint}) is not the one experiment 'tiny' "
        "was searched on ({fingerprint})",
    ),
    Mistake(
        "fingerprint-promote", "promotes a model on a dataset built with other settings",
        "learn2tune promote {config} --set data.dir={root}/other",
        "the dataset in {root}/other (fingerprint {other_fingerprint}) is not the one tiny version 1 "
        "was trained on ({fingerprint}); point the config at that dataset",
    ),
    # --- episode settings (the dataset: train 20 classes, val 4, test 6; 6 images per class)
    Mistake(
        "episodes-ways-over-classes", "asks for more ways than the train split has classes",
        "learn2tune search {config} --set episodes.train.ways=25",
        "episodes.train ({root}/dataset): 25-way episodes need 25 classes but split 'train' has 20",
    ),
    Mistake(
        "episodes-ways-over-val-classes", "asks for ways the train split has but the val split has not",
        "learn2tune search {config} --set episodes.train.ways=5",
        "episodes.train (used for validation) ({root}/dataset): 5-way episodes need 5 classes but split 'val' has 4",
    ),
    Mistake(
        "episodes-too-many-images", "asks for more shots + query than a class has images",
        "learn2tune search {config} --set episodes.train.query=9",
        "episodes need shots + query = 1 + 9 = 10 images per class but the smallest class of split 'train' has 6",
    ),
    Mistake(
        "episodes-test-ways", "asks run for test ways the test split cannot give",
        "learn2tune run {config} --ways 3,20",
        "episodes.test ({root}/dataset): 20-way episodes need 20 classes but split 'test' has 6",
    ),
    Mistake(
        "episodes-test-shots", "evaluates with more test shots than the test classes allow",
        "learn2tune evaluate {config} --shots 5",
        "episodes need shots + query = 5 + 2 = 7 images per class but the smallest class of split 'test' has 6",
    ),
    # --- resources (Ray here: one node, 2 CPUs, no GPU)
    Mistake(
        "resources-gpu-on-cpu-cluster", "asks for a GPU per trial on a cluster without GPUs",
        "learn2tune search {config} --gpus-per-trial 1",
        "search.resources.gpu asks for 1 GPU(s) per trial but the largest Ray node has 0 (cluster total 0)",
    ),
    Mistake(
        "resources-more-cpus-than-cluster", "asks for more CPUs per trial than any node has",
        "learn2tune search {config} --cpus-per-trial 3",
        "search.resources.cpu asks for 3 CPU(s) per trial but the largest Ray node has 2 (cluster total 2)",
    ),
    Mistake(
        "resources-gpu-with-cpu-device", "asks for GPUs per trial and device cpu",
        "learn2tune search {config} --gpus-per-trial 0.5 --set device=cpu",
        "config error: search.resources.gpu is 0.5 but device is 'cpu'",
    ),
    Mistake(
        "resources-wait-times-out", "waits for a GPU node that never joins",
        "learn2tune search {config} --gpus-per-trial 1 --wait-for-resources 2",
        "search.resources.gpu asks for 1 GPU(s) per trial but the largest Ray node has 0 (cluster total 0) "
        "after waiting 2 s for a node that can hold one trial (--wait-for-resources / ray.wait_for_resources)",
    ),
    # --- the cluster and the tracking server: one line within 15 s, not minutes of retries
    Mistake(
        "ray-wrong-address", "points --address at a port where no Ray head listens",
        "learn2tune search {config} --address 127.0.0.1:1",
        "cannot reach the Ray cluster at 127.0.0.1:1 (ray.address / --address / RAY_ADDRESS): "
        "127.0.0.1:1 connection refused; is the head running (`ray start --head`) and the port open?",
    ),
    Mistake(
        "ray-address-not-a-head", "gives the tracking server's host:port as the Ray address",
        "learn2tune search {config} --address {refusing_server_address}",
        "the Ray cluster at {refusing_server_address} (ray.address / --address / RAY_ADDRESS) is not a Ray head: "
        "{refusing_server_address} answers, but not as Ray's GCS (",
    ),
    Mistake(
        "ray-missing-forwarded-variable", "forwards a variable to the trials that the driver does not have",
        "learn2tune search {config} --set ray.env_vars=[L2T_NEVER_SET]",
        "ray.env_vars names L2T_NEVER_SET, not set in this environment; set it before starting learn2tune "
        "or remove it from ray.env_vars",
    ),
    *(
        Mistake(
            f"tracking-unreachable-{command}", f"runs {command} against a tracking server that is not running",
            f"learn2tune {command} {{config}} --set tracking.uri={UNREACHABLE}",
            f"cannot reach the MLflow tracking server at {UNREACHABLE} (tracking.uri / MLFLOW_TRACKING_URI): "
            "connection refused",
        )
        for command in ("search", "run", "evaluate", "register", "promote", "serve", "ui")
    ),
    *(
        Mistake(
            f"tracking-forbidden-{command}", f"runs {command} against a tracking server that answers 403 to its Host",
            f"learn2tune {command} {{config}} --set tracking.uri={{refusing_server}}",
            "the MLflow tracking server at {refusing_server} (tracking.uri / MLFLOW_TRACKING_URI) answered "
            "403 Forbidden (Invalid Host header - possible DNS rebinding attack detected)",
        )
        for command in ("search", "serve")
    ),
    # --- stage order and registry names
    Mistake(
        "order-evaluate-before-search", "evaluates an experiment that was never searched",
        "learn2tune evaluate {config} --experiment fresh",
        "no finished search for experiment 'fresh'; run `learn2tune search {config} --experiment fresh` first",
    ),
    Mistake(
        "order-register-before-evaluate", "registers an experiment that was never evaluated",
        "learn2tune register {config} --experiment fresh",
        "experiment 'fresh' has not been evaluated; run `learn2tune evaluate {config} --experiment fresh` first",
    ),
    Mistake(
        "record-unknown-version", "evaluates a search that another learn2tune version wrote",
        "learn2tune evaluate {config} --set workdir={tmp}/runs",
        "{tmp}/runs/tune/tiny/search_result.json: format_version 2 is not one this learn2tune reads (1)",
        edited_record("search_result.json", lambda record: record.update(format_version=2)),
    ),
    Mistake(
        "record-missing-field", "registers from an evaluation.json edited by hand, a field lost",
        "learn2tune register {config} --set workdir={tmp}/runs",
        "{tmp}/runs/tune/tiny/evaluation.json: field models[0].checkpoint is missing",
        edited_record("evaluation.json", lambda record: record["models"][0].pop("checkpoint")),
    ),
    Mistake(
        "registry-invalid-name", "registers under a name with a space",
        "learn2tune register {config} --name 'my model'",
        "config error: registry.model_name must be null or a name of letters, digits, '.', '_' or '-', "
        "got 'my model'",
    ),
    Mistake(
        "registry-promote-unknown-model", "promotes a model name that was never registered",
        "learn2tune promote {config} --name nosuch",
        f"no registered model 'nosuch' in {STORE}; run `learn2tune register {{config}} --name nosuch` first",
    ),
    Mistake(
        "registry-promote-before-register", "promotes before anything was registered in the tracking store",
        "learn2tune promote {config} --set tracking.uri=sqlite:///{tmp}/mlflow.db",
        "no registered model 'tiny' in sqlite:///{tmp}/mlflow.db; run "
        "`learn2tune register {config} --set tracking.uri=sqlite:///{tmp}/mlflow.db` first",
    ),
    Mistake(
        "registry-serve-before-register", "serves before anything was registered in the tracking store",
        "learn2tune serve {config} --set tracking.uri=sqlite:///{tmp}/mlflow.db",
        "no registered model 'tiny' in sqlite:///{tmp}/mlflow.db; run `learn2tune register",
    ),
    Mistake(
        "registry-register-twice", "registers the same evaluated trial a second time",
        "learn2tune register {config}",
        "is already registered as tiny version 1 (alias candidate); nothing registered. Gate it with "
        "`learn2tune promote {config}`",
    ),
    Mistake(
        "registry-promote-unknown-version", "promotes a version that does not exist",
        "learn2tune promote {config} --candidate 9",
        "model 'tiny' has no version 9",
    ),
    Mistake(
        "registry-serve-unknown-model", "serves a model name that was never registered",
        "learn2tune serve {config} --name nosuch",
        f"no registered model 'nosuch' in {STORE}; run `learn2tune register {{config}} --name nosuch` first",
    ),
    Mistake(
        "registry-serve-unknown-version", "serves a version that does not exist",
        "learn2tune serve {config} --version 9",
        f"model 'tiny' in {STORE} has no version 9",
    ),
    Mistake(
        "registry-serve-unknown-alias", "serves an alias nobody set",
        "learn2tune serve {config} --alias staging",
        f"model 'tiny' in {STORE} has no version with alias 'staging'",
    ),
    Mistake(
        "registry-serve-before-promote", "serves the champion before promoting any version",
        "learn2tune serve {config}",
        "has no version with alias 'champion'; `learn2tune promote {config}` sets the champion",
    ),
    # --- servers on a port another server holds
    Mistake(
        "serve-busy-port", "serves on a port another server already listens on",
        "learn2tune serve {config} --version 1 --port {busy_port}",
        "port {busy_port} on 127.0.0.1 is in use: another server listens there; stop it or choose another "
        "port with --port",
    ),
    Mistake(
        "ui-busy-port", "starts the MLflow UI on a port another server already listens on",
        "learn2tune ui {config} --port {busy_port}",
        "port {busy_port} on 127.0.0.1 is in use",
    ),
    # --- storage URIs (a real S3-compatible server on 127.0.0.1 answers)
    Mistake(
        "storage-unsupported-scheme", "puts the workdir on a storage scheme learn2tune cannot use",
        "learn2tune search {config} --set workdir=ftp://files.example.com/l2t",
        "config error: workdir: unsupported storage scheme 'ftp' in 'ftp://files.example.com/l2t'; "
        "use a local path, s3://bucket/prefix or gs://bucket/prefix",
    ),
    Mistake(
        "storage-missing-bucket", "puts the workdir in a bucket that does not exist",
        "learn2tune run {config} --set workdir=s3://no-such-bucket/l2t",
        "workdir: bucket 'no-such-bucket' of s3://no-such-bucket/l2t does not exist at http://127.0.0.1:",
    ),
    Mistake(
        "storage-missing-bucket-dataset", "builds the dataset into a bucket that does not exist",
        "learn2tune build {config} --out s3://no-such-bucket/datasets/tiny",
        "data.dir: bucket 'no-such-bucket' of s3://no-such-bucket/datasets/tiny does not exist at http://127.0.0.1:",
    ),
    # --- serving requests (to the 3-way MAML; the scoring server answers them with HTTP 400)
    Mistake(
        "request-no-support", "sends query images only",
        Request(classes=0),
        "no support rows: give at least one labelled image per class (role='support')",
    ),
    Mistake(
        "request-one-class", "gives every support image the same label",
        Request(classes=1),
        "the support set has one class ('class-0'); give at least 2 labels",
    ),
    Mistake(
        "request-unlabelled-support", "leaves a support image without a label",
        Request(edit=(0, "label", None)),
        "row 0: support rows need a label",
    ),
    Mistake(
        "request-not-an-image", "sends text that is not an encoded image",
        Request(edit=(1, "image", "bm90IGFuIGltYWdl")),
        "row 1: image is not a base64-encoded PNG or JPEG",
    ),
    Mistake(
        "request-far-from-square", "sends a 10×40 image",
        Request(edit=(0, "image", encode_image(np.zeros((10, 40), np.uint8)))),
        "row 0: image is 10×40 pixels, too far from square to stretch to the model's 28×28",
    ),
    Mistake(
        "request-more-ways-than-the-model", "asks a 3-way MAML to tell 4 classes apart",
        Request(classes=4),
        "maml was built for 3-way episodes with a 3-way output head and cannot score 4-way episodes",
    ),
    Mistake(
        "bench-fomaml-reference-no-omniglot", "points the FOMAML reference benchmark at a folder without Omniglot",
        "learn2tune bench fomaml-reference --data {tmp}",
        "no Omniglot in {tmp}: expected images_background.zip and images_evaluation.zip; pass --data DIR",
    ),
    Mistake(
        "bench-maml-bad-settings", "asks the MAML benchmark for a setting that is not STEPSxTASKS",
        "learn2tune bench maml --settings 5by32",
        "--settings: expected STEPSxTASKS items such as 5x32, got '5by32'",
    ),
]  # fmt: skip


# ---------------------------------------------------------------- the run and the test

CONFIG = """\
name: tiny
workdir: {root}/runs
tracking: {{uri: "sqlite:///{root}/mlflow.db"}}
data: {{synthetic_classes: 30, synthetic_images_per_class: 6, dir: "{root}/dataset"}}
episodes:
  train: {{ways: 3, shots: 1, query: 2}}
  val: {{episodes: 4}}
  test: {{ways: [3], shots: [1], query: 2, episodes: 4}}
search:
  families: [maml]
  fixed: {{maml: {{width: 16, path: loop, inner_steps: 1}}}}
  trials: 1
  max_iterations: 2
  grace_iterations: 1
  eval_every: 1
  checkpoint_every: 1
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory, pipeline_ray) -> World:
    """``learn2tune run`` of CONFIG, a second dataset (data.seed 1), version 1 loaded, and an episode."""
    import mlflow

    from pipeline.tracking import make_client
    from tasks.episodes import EpisodeSpec
    from tasks.sampler import fixed_episodes
    from tasks.store import DatasetStore

    root = tmp_path_factory.mktemp("mistakes")
    config = root / "tiny.yaml"
    config.write_text(CONFIG.format(root=root))
    assert main(["run", str(config)]) == 0
    assert main(["build", str(config), "--set", "data.seed=1", "--out", str(root / "other")]) == 0
    fingerprint, other = (DatasetStore.open(root / name).fingerprint for name in ("dataset", "other"))
    source = make_client(f"sqlite:///{root}/mlflow.db").get_model_version_download_uri("tiny", "1")
    model = mlflow.pyfunc.load_model(source, dst_path=str(tmp_path_factory.mktemp("model")))
    test_split = DatasetStore.open(root / "dataset").split("test")
    episode = next(iter(fixed_episodes(test_split, EpisodeSpec(4, 1, 1), 1, seed=0)))
    support = [
        (f"class-{y}", x.numpy()) for x, y in zip(episode.support_x[0], episode.support_y[0].tolist(), strict=True)
    ]
    return World(root, (fingerprint, other), model, support, [x.numpy() for x in episode.query_x[0]])


ONE_LINE_WITHIN_S = 15


@pytest.fixture(scope="module")
def busy_port():
    """A loopback port a server listens on for the module's rows."""
    import socket

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


@pytest.mark.parametrize("mistake", MISTAKES, ids=[m.id for m in MISTAKES])
def test_mistake_gets_one_line_and_changes_nothing(
    mistake: Mistake, world: World, s3_server, tmp_path, capsys, monkeypatch, request
):
    """The row's command or request fails with the row's one line, within ONE_LINE_WITHIN_S; no
    file under {root} or {tmp} changes. The AWS variables point at the test's S3 server."""
    for key, value in s3_server.environment().items():
        monkeypatch.setenv(key, value)
    if mistake.setup is not None:
        mistake.setup(tmp_path, world)
    places = world.places(tmp_path)
    if "{refusing_server" in str(mistake.command):  # started only for the rows that need it
        server = request.getfixturevalue("ops_mlflow_server").refusing_url
        places.update(refusing_server=server, refusing_server_address=server.removeprefix("http://"))
    if "{busy_port}" in str(mistake.command):
        places.update(busy_port=str(request.getfixturevalue("busy_port")))
    before = snapshot(world.root, tmp_path)
    started = time.monotonic()
    if isinstance(mistake.command, Request):
        line = refusal(world, mistake.command)
    else:
        monkeypatch.setattr(os, "execve", started_a_process)  # a `serve` that got through would exec
        line = error_line([word.format(**places) for word in shlex.split(mistake.command)[1:]], capsys)
    took = time.monotonic() - started
    assert mistake.sees.format(**places) in line, f"the user {mistake.user_did} and saw: {line}"
    assert took < ONE_LINE_WITHIN_S, f"the user {mistake.user_did} waited {took:.1f} s for: {line}"
    assert snapshot(world.root, tmp_path) == before


def error_line(argv: list[str], capsys) -> str:
    """The one stderr line of ``learn2tune ARGV``, which must exit with status 2."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("learn2tune: error: "), err
    return lines[0]


def refusal(world: World, request: Request) -> str:
    """The model's one-line refusal of ``request``: the HTTP 400 message of MLflow's scoring server
    (its request handler, called in-process), which must not carry the request back (its base64)."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    body = request_body(world.support[: request.classes], world.query)
    split = body["dataframe_split"]
    if request.edit is not None:
        row, column, value = request.edit
        split["data"][row][split["columns"].index(column)] = value
    with pytest.raises(MlflowException) as refused:
        scoring_server.invocations(
            json.dumps(body), "application/json", world.model, world.model.metadata.get_input_schema()
        )
    message = refused.value.message
    assert refused.value.get_http_status_code() == 400 and "\n" not in message, message
    assert "Failed to predict" not in message and len(message) < 300, message
    return message


def started_a_process(*args: Any) -> None:
    raise AssertionError(f"the command started {args[0]} instead of refusing")


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``roots`` with its size and modification time."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for root in roots for p in root.rglob("*")}
