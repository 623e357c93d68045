"""The pre-train + fine-tune family (learners/finetune.py) and its class mini-batches (tasks/class_batches.py):
the sampler's epochs, training through the one loop on a real Parquet dataset, checkpoint and resume
with the classifier sized by the training split, the per-task heads, and the served model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from learners.checkpoint import fresh_learner, load_learner, save_learner
from learners.finetune import FineTune
from learners.registry import HyperparamError, make_hparams
from pipeline.meta_training import Report, Schedule, TrainingEpisodes, meta_train
from pipeline.scoring import episode_accuracies
from tasks.class_batches import ClassBatchSampler
from tasks.episodes import EpisodeSpec
from tasks.sampler import EpisodeSampler, fixed_episodes
from tasks.store import DatasetStore, SplitStore

pytestmark = pytest.mark.usefixtures("single_thread")

EPISODES = EpisodeSpec(3, 1, 2)


def finetune(store: DatasetStore, **hparams: object) -> FineTune:
    values = {"width": 8, "depth": 2, "batch_size": 16, "head_steps": 20, **hparams}
    spec = {"family": "finetune", "hparams": values, "image_shape": list(store.image_shape), "ways": 3}
    learner = fresh_learner(spec, seed=0)
    assert isinstance(learner, FineTune)
    return learner


def test_class_batches_cover_every_image_once_per_epoch_with_its_class_reproducibly(tasks_small_dataset):
    train = DatasetStore.open(tasks_small_dataset).split("train")  # 24 classes x 10 images
    sampler = ClassBatchSampler(train, batch_size=60, seed=4)
    epoch = [sampler.sample() for _ in range(len(train.images) // 60)]
    images = torch.cat([b.images for b in epoch])
    labels = torch.cat([b.labels for b in epoch])
    assert all(b.images.shape == (60, *train.image_shape) and b.images.dtype == torch.uint8 for b in epoch)
    rows = {image.numpy().tobytes(): int(label) for image, label in zip(images, labels, strict=True)}
    assert len(rows) == len(train.images)  # each image once in the epoch
    for c in (0, 11, 23):  # every image carries its split-wide class
        assert {rows[image.numpy().tobytes()] for image in torch.from_numpy(train.class_images(c))} == {c}
    again = ClassBatchSampler(train, batch_size=60, seed=4).sample()
    assert torch.equal(again.images, epoch[0].images) and torch.equal(again.labels, epoch[0].labels)
    assert not torch.equal(ClassBatchSampler(train, batch_size=60, seed=5).sample().labels, epoch[0].labels)
    assert ClassBatchSampler(train, batch_size=10_000).sample().labels.shape == (len(train.images),)
    floats = epoch[0].to("cpu")
    assert floats.images.dtype == torch.float32 and float(floats.images.max()) <= 1.0
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        ClassBatchSampler(train, batch_size=0)


def test_the_loop_pretrains_on_class_batches_and_a_checkpoint_resumes_exactly(tasks_small_dataset, tmp_path):
    store = DatasetStore.open(tasks_small_dataset)
    train = store.split("train")
    validation = list(fixed_episodes(store.split("val"), EPISODES, 8, seed=0))
    learner = finetune(store, lr=3e-3)
    untrained = episode_accuracies(learner, validation, torch.device("cpu"))  # no classifier needed to predict
    reports: list[Report] = []
    meta_train(learner, TrainingEpisodes(train, EPISODES, 2, seed=1), Schedule(30, 10), reports.append)
    assert learner.classifier is not None and learner.classifier.out_features == train.num_classes == 24
    assert reports[-1].loss < reports[0].loss  # it learns the training classes
    assert [r.iteration for r in reports] == [10, 20, 30]

    save_learner(learner, tmp_path, {"iteration": 30})
    loaded, extra = load_learner(tmp_path)
    assert isinstance(loaded, FineTune) and extra == {"iteration": 30}
    assert loaded.classifier is not None and loaded.classifier.out_features == 24
    batch = validation[0].to("cpu")
    torch.testing.assert_close(
        loaded.predict(batch.support_x, batch.support_y, batch.query_x),
        learner.predict(batch.support_x, batch.support_y, batch.query_x),
    )
    # the optimizer came back too: the same further steps give the same weights
    for model in (learner, loaded):
        meta_train(model, TrainingEpisodes(train, EPISODES, 2, seed=2), Schedule(33, 3), reports.append, start=30)
    for p, q in zip(learner.parameters(), loaded.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    assert not np.array_equal(untrained, episode_accuracies(learner, validation, torch.device("cpu")))

    other = DatasetStore.open(tasks_small_dataset).split("val")  # 8 classes, not the 24 it was trained on
    with pytest.raises(ValueError, match="pre-trained on 24 classes, but split 'val' has 8"):
        learner.training_sampler(other, EPISODES, 2, 0)
    with pytest.raises(TypeError, match="trains on class mini-batches"):
        learner.meta_train_step(EpisodeSampler(train, EPISODES, tasks=2).sample().to("cpu"))


@pytest.mark.parametrize("hparams", [{}, {"head": "cosine"}, {"finetune_steps": 2}])
def test_each_tasks_head_depends_on_its_own_support_set_alone(tasks_small_dataset, hparams):
    store = DatasetStore.open(tasks_small_dataset)
    learner = finetune(store, **hparams)
    learner.training_sampler(store.split("train"), EPISODES, 1, 0)
    learner.meta_train_step(ClassBatchSampler(store.split("train"), 16).sample().to("cpu"))  # running statistics
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    batch = next(iter(fixed_episodes(store.split("test"), EPISODES, 4, seed=0))).to("cpu")
    logits = learner.predict(batch.support_x, batch.support_y, batch.query_x)
    assert logits.shape == (4, 6, 3) and torch.isfinite(logits).all()
    one = batch.task(2)
    torch.testing.assert_close(logits[2:3], learner.predict(one.support_x, one.support_y, one.query_x))
    assert all(torch.equal(before[k], v) for k, v in learner.state_dict().items())  # predicting changes nothing


def test_without_steps_the_cosine_head_is_a_cosine_nearest_mean_classifier(tasks_small_dataset):
    store = DatasetStore.open(tasks_small_dataset)
    learner = finetune(store, head="cosine", head_steps=0)
    batch = next(iter(fixed_episodes(store.split("test"), EpisodeSpec(3, 2, 2), 2, seed=0))).to("cpu")
    learner.eval()
    with torch.no_grad():
        support = learner.backbone(batch.support_x.flatten(0, 1)).unflatten(0, (2, 6))
        query = learner.backbone(batch.query_x.flatten(0, 1)).unflatten(0, (2, 6))
    means = F.normalize(support, dim=-1).unflatten(1, (3, 2)).mean(2)
    expected = 10.0 * F.normalize(query, dim=-1) @ F.normalize(means, dim=-1).transpose(1, 2)
    torch.testing.assert_close(learner.predict(batch.support_x, batch.support_y, batch.query_x), expected)


@pytest.mark.parametrize(
    "values, expected",
    [
        ({"head": "softmax"}, "finetune.head must be one of linear, cosine, got 'softmax'"),
        ({"batch_size": 1}, "finetune.batch_size must be >= 2, got 1"),
        ({"head_lr": 0.0}, "finetune.head_lr must be > 0, got 0.0"),
        ({"finetune_steps": -1}, "finetune.finetune_steps must be >= 0, got -1"),
    ],
)
def test_hyperparameters_its_learner_cannot_use_are_refused(values, expected):
    with pytest.raises(HyperparamError) as error:
        make_hparams("finetune", values)
    assert str(error.value).startswith(expected)


def test_a_trained_model_is_served_by_the_registered_models_pyfunc(tasks_small_dataset, tmp_path):
    """The checkpoint (classifier of 24 classes included) saved in the registry's model format and read
    back as MLflow loads it; its answer is the learner's own prediction."""
    import mlflow
    import pandas as pd

    from deploy.client import request_body
    from deploy.model_format import save_model

    store = DatasetStore.open(tasks_small_dataset)
    learner = finetune(store)
    meta_train(learner, TrainingEpisodes(store.split("train"), EPISODES, 1, seed=0), Schedule(5, 5), lambda r: None)
    save_learner(learner, tmp_path / "checkpoint", {"iteration": 5})
    save_model(tmp_path / "checkpoint", tmp_path / "model")
    batch = next(iter(fixed_episodes(store.split("test"), EpisodeSpec(3, 2, 4), 1, seed=0)))
    support = [(f"c{y}", x.numpy()) for x, y in zip(batch.support_x[0], batch.support_y[0].tolist(), strict=True)]
    body = request_body(support, [x.numpy() for x in batch.query_x[0]])["dataframe_split"]
    served = mlflow.pyfunc.load_model(str(tmp_path / "model")).predict(
        pd.DataFrame(body["data"], columns=body["columns"])
    )
    floats = batch.to("cpu")
    expected = learner.predict(floats.support_x, floats.support_y, floats.query_x)
    assert served["label"].tolist() == [f"c{i}" for i in expected[0].argmax(-1).tolist()]


@pytest.mark.parametrize("backbone", ["conv4", "resnet12"])
def test_it_pretrains_and_predicts_on_either_backbone_at_84x84_colour(backbone):
    classes, per_class, shape = 6, 4, (3, 84, 84)
    images = np.random.default_rng(0).integers(0, 256, (classes * per_class, *shape), dtype=np.uint8)
    split = SplitStore("train", images, np.arange(classes + 1) * per_class, np.full(classes, per_class),
                       [f"c{c}" for c in range(classes)], [""] * classes)  # fmt: skip
    hparams = {"backbone": backbone, "width": 4, "dropblock": 0.1 * (backbone == "resnet12"), "batch_size": 8}
    learner = fresh_learner({"family": "finetune", "hparams": hparams, "image_shape": list(shape), "ways": 3}, seed=0)
    reports: list[Report] = []
    meta_train(learner, TrainingEpisodes(split, EPISODES, 1, seed=0), Schedule(2, 1), reports.append)
    assert len(reports) == 2 and all(np.isfinite(r.loss) for r in reports)
    batch = next(iter(fixed_episodes(split, EPISODES, 2, seed=0))).to("cpu")
    assert learner.predict(batch.support_x, batch.support_y, batch.query_x).shape == (2, 6, 3)
