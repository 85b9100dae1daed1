"""The classification baseline (softmax loss) and DREML ensembles: references written from the formulas,
meta-class partition invariants, the ensemble model, config checks and tiny runs on the built-in digits."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import deepmetric.losses as losses_pkg
from deepmetric.models import EmbeddingHead, build_backbone
from deepmetric.models.ensemble import EnsembleModel, build_ensemble, meta_class_partitions
from deepmetric.training import train
from deepmetric.training.config import ConfigError
from tests.demo_configs import TINY_RUN, demo_config


def softmax_reference(
    x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """Mean over samples of -log(exp(z_y) / sum_c exp(z_c)), z = W x + b, written out in loops."""
    total = 0.0
    for i in range(x.shape[0]):
        logits = [
            sum(weight[c, k] * x[i, k] for k in range(x.shape[1])) + bias[c] for c in range(weight.shape[0])
        ]
        denominator = sum(torch.exp(z) for z in logits)
        total = total - torch.log(torch.exp(logits[int(labels[i])]) / denominator)
    return total / x.shape[0]


def test_softmax_matches_reference_and_cross_entropy():
    torch.manual_seed(0)
    loss = losses_pkg.get("softmax", num_classes=4, embedding_size=5).double()
    x = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 3])
    value = loss(x, labels)
    (grad,) = torch.autograd.grad(value, x)

    x_ref = x.detach().clone().requires_grad_()
    weight, bias = loss.classifier.weight.detach(), loss.classifier.bias.detach()
    expected = softmax_reference(x_ref, labels, weight, bias)
    (grad_ref,) = torch.autograd.grad(expected, x_ref)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grad, grad_ref)
    torch.testing.assert_close(value, F.cross_entropy(x.detach() @ weight.T + bias, labels))


def test_softmax_mined_samples_and_errors():
    torch.manual_seed(1)
    loss = losses_pkg.get("softmax", num_classes=3, embedding_size=4, reduction="none")
    x, labels = torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    full = loss(x, labels)
    mined = loss(x, labels, (torch.tensor([0]), torch.tensor([1]), torch.tensor([0]), torch.tensor([4])))
    torch.testing.assert_close(mined, full[[0, 1, 4]])
    with pytest.raises(ValueError, match="outside"):
        loss(x, torch.tensor([0, 0, 1, 1, 2, 3]))
    with pytest.raises(ValueError, match="embedding_size=4"):
        loss(torch.randn(6, 5), labels)
    with pytest.raises(ValueError, match="1-D class labels"):
        loss(x, torch.eye(3)[labels])
    with pytest.raises(ValueError, match="num_classes"):
        losses_pkg.get("softmax", num_classes=0, embedding_size=4)


# ---------------------------------------------------------------- DREML


def grouping(row: np.ndarray) -> frozenset:
    return frozenset(frozenset(np.flatnonzero(row == m).tolist()) for m in np.unique(row))


def test_meta_class_partitions_are_valid_balanced_distinct_and_seeded():
    table = meta_class_partitions(num_classes=20, size=6, meta_classes=4, seed=3)
    assert table.shape == (6, 20) and table.dtype == np.int64
    for row in table:  # every class in exactly one meta-class, all meta-classes used, sizes 5 each
        assert sorted(np.unique(row).tolist()) == [0, 1, 2, 3]
        assert np.bincount(row).tolist() == [5, 5, 5, 5]
    assert len({grouping(row) for row in table}) == 6
    np.testing.assert_array_equal(table, meta_class_partitions(20, 6, 4, seed=3))
    assert not np.array_equal(table, meta_class_partitions(20, 6, 4, seed=4))
    uneven = meta_class_partitions(num_classes=7, size=3, meta_classes=3, seed=0)
    assert all(sorted(np.bincount(row).tolist()) == [2, 2, 3] for row in uneven)
    few = meta_class_partitions(num_classes=3, size=2, meta_classes=5, seed=0)  # fewer classes than L
    assert all(sorted(row.tolist()) == [0, 1, 2] for row in few)
    with pytest.raises(ValueError, match="meta_classes"):
        meta_class_partitions(10, 2, 1, seed=0)


def test_dreml_loss_is_the_sum_of_independent_meta_class_softmaxes():
    torch.manual_seed(0)
    partitions = meta_class_partitions(num_classes=6, size=3, meta_classes=2, seed=0)
    loss = losses_pkg.get("dreml", num_classes=6, embedding_size=12, partitions=partitions).double()
    x = torch.randn(10, 12, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2, 3])
    value = loss(x, labels)
    value.backward()
    expected = 0.0
    for d, learner in enumerate(loss.learners):
        chunk = x.detach()[:, 4 * d : 4 * (d + 1)].clone().requires_grad_()
        meta = torch.as_tensor(partitions[d])[labels]
        alone = softmax_reference(
            chunk, meta, learner.classifier.weight.detach(), learner.classifier.bias.detach()
        )
        (grad_alone,) = torch.autograd.grad(alone, chunk)
        torch.testing.assert_close(x.grad[:, 4 * d : 4 * (d + 1)], grad_alone)  # exactly the learner alone
        expected = expected + alone
    torch.testing.assert_close(value, expected)
    with pytest.raises(ValueError, match="equal learner embeddings"):
        losses_pkg.get("dreml", num_classes=6, embedding_size=10, partitions=partitions)
    with pytest.raises(ValueError, match="num_classes"):
        losses_pkg.get("dreml", num_classes=5, embedding_size=12, partitions=partitions)


def small_cnn():
    return build_backbone("small_cnn", in_channels=1, image_size=8, width=4)


def test_ensemble_model_independent_and_shared_backbones():
    torch.manual_seed(0)
    images = torch.randn(5, 1, 8, 8)

    def head(features: int) -> EmbeddingHead:
        return EmbeddingHead(features, embedding_size=6)

    independent = build_ensemble(small_cnn, head, size=3, shared_backbone=False)
    assert isinstance(independent, EnsembleModel) and not independent.shared_backbone
    assert independent.embedding_size == 18 and independent.input_spec == small_cnn().input_spec
    out = independent(images)
    assert out.shape == (5, 18)
    parts = independent.split(out)
    assert len(parts) == 3 and all(torch.allclose(p.norm(dim=1), torch.ones(5)) for p in parts)
    for d, (member, member_head) in enumerate(zip(independent.backbone.members, independent.head.heads)):
        torch.testing.assert_close(parts[d], member_head(member(images)))
    weights = [m.body[0].weight for m in independent.backbone.members]
    assert not torch.equal(weights[0], weights[1])  # each learner has its own backbone

    shared = build_ensemble(small_cnn, head, size=4, shared_backbone=True)
    features = shared.backbone(images)
    torch.testing.assert_close(shared(images), shared.embed_features(features))
    assert shared.embed_features(features.mean(dim=(-2, -1))).shape == (5, 24)


def tiny_config(*extra: str):
    return demo_config(*TINY_RUN, *extra)


def test_ensemble_config_validation():
    config = tiny_config("loss.name=dreml", "ensemble.size=3", "ensemble.meta_classes=2")
    assert config.ensemble.size == 3 and config.ensemble.meta_classes == 2
    with pytest.raises(ConfigError, match="ensemble section"):
        tiny_config("loss.name=dreml")
    with pytest.raises(ConfigError, match="loss dreml"):
        tiny_config("ensemble.size=3")
    with pytest.raises(ConfigError, match=r"ensemble\.meta_classes"):
        tiny_config("loss.name=dreml", "ensemble.meta_classes=1")
    with pytest.raises(ConfigError, match=r"ensemble\.size"):
        tiny_config("loss.name=dreml", "ensemble.size=0")
    with pytest.raises(ConfigError, match="partitions"):
        tiny_config("loss.name=dreml", "ensemble.size=2", "loss.partitions=[[0, 1]]")


@pytest.mark.parametrize("frozen, size", [(False, 2), (True, 3)])
def test_dreml_runs_train(tmp_path, frozen, size):
    extra = [
        "loss.name=dreml",
        f"ensemble.size={size}",
        "ensemble.meta_classes=2",
        f"model.frozen={str(frozen).lower()}",
    ]
    extra.append(f"model.feature_cache={tmp_path / 'cache'}")
    extra.append("train.iterations=2")
    metrics = train(tiny_config(*extra), tmp_path / "run")
    assert set(metrics["trained"]) == {"recall@1", "knn_accuracy@3"}
    assert np.load(tmp_path / "run/embeddings/test_embeddings.npy").shape[1] == size * 8
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=False)
    np.testing.assert_array_equal(
        state["loss"]["partitions"].numpy(), meta_class_partitions(5, size, 2, seed=0)
    )
    losses = [
        json.loads(line)["loss"]
        for line in (tmp_path / "run/log.jsonl").read_text().splitlines()
        if "loss" in line
    ]
    assert all(math.isfinite(v) for v in losses) and len(losses) == 1
    backbone_keys = [k for k in state["model"] if k.startswith("backbone.")]
    assert any(f".members.{size - 1}." in k for k in backbone_keys) != frozen  # D backbones, or one shared
    if frozen:  # the saved ensemble embeds images again as in training (frozen features = pooled maps)
        from deepmetric.data import get_dataset
        from deepmetric.data.transforms import build_transform
        from deepmetric.training import embed_dataset, load_model

        model = load_model(tmp_path / "run")
        assert isinstance(model, EnsembleModel) and model.embedding_size == size * 8
        dataset = get_dataset(
            "digits", split="test", transform=build_transform(model.input_spec, train=False)
        )
        saved = np.load(tmp_path / "run/embeddings/test_embeddings.npy")
        np.testing.assert_allclose(embed_dataset(model, dataset), saved, atol=1e-5)


def test_classification_baseline_run_with_knn_accuracy(tmp_path):
    metrics = train(
        tiny_config("loss.name=softmax", "model.normalize=false", "train.iterations=2"), tmp_path / "run"
    )
    assert 0 <= metrics["trained"]["knn_accuracy@3"] <= 1
