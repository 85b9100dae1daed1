import pytest
import torch

from deepmetric.losses import get
from deepmetric.losses.xbm import CrossBatchMemory
from deepmetric.training.components import build_loss
from deepmetric.training.config import ConfigError, load_config


def contrastive_reference(
    x: torch.Tensor, labels: torch.Tensor, refs: torch.Tensor, ref_labels: torch.Tensor, self_compare: bool
) -> torch.Tensor:
    """Contrastive loss (pos margin 0, neg margin 1, Euclidean) from its definition: the mean over the
    non-zero pair losses, pairs of a sample with itself left out when ``self_compare``."""
    terms = []
    for i in range(len(x)):
        for j in range(len(refs)):
            if self_compare and i == j:
                continue
            distance = torch.linalg.vector_norm(x[i] - refs[j])
            terms.append(distance if labels[i] == ref_labels[j] else torch.relu(1.0 - distance))
    terms = torch.stack(terms)
    return terms.sum() / (terms > 0).sum().clamp_min(1)


def test_memory_loss_matches_a_direct_reference_over_a_ring_buffer():
    generator = torch.Generator().manual_seed(0)
    size, start = 10, 1
    wrapper = CrossBatchMemory(get("contrastive", pos_margin=0.0, neg_margin=1.0), 3, size=size, start=start)
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []  # the reference memory: every stored sample, in order
    for call in range(5):
        x = torch.randn(4, 3, generator=generator) * 0.4
        labels = torch.randint(0, 3, (4,), generator=generator)
        expected = contrastive_reference(x, labels, x, labels, self_compare=True)
        memory = kept[-size:]
        if memory:
            refs = torch.stack([e for e, _ in memory])
            ref_labels = torch.stack([label for _, label in memory])
            expected = expected + contrastive_reference(x, labels, refs, ref_labels, self_compare=False)
        assert torch.allclose(wrapper(x, labels), expected, atol=1e-6), call
        if call >= start:
            kept.extend(zip(x, labels))
    assert int(wrapper.filled) == size
    stored = {tuple(row.tolist()) for row in wrapper.memory}
    assert stored == {tuple(e.tolist()) for e, _ in kept[-size:]}  # the newest 10 samples, oldest overwritten


def test_memory_gradient_flows_to_the_batch_only_and_state_is_checkpointed():
    wrapper = CrossBatchMemory(get("contrastive"), 4, size=8)
    first = torch.randn(4, 4)
    wrapper(first, torch.tensor([0, 0, 1, 1]))
    x = torch.randn(4, 4, requires_grad=True)
    wrapper(x, torch.tensor([0, 1, 1, 0])).backward()  # the memory changed after the forward pass
    assert x.grad is not None and x.grad.abs().sum() > 0 and not wrapper.memory.requires_grad
    copy = CrossBatchMemory(get("contrastive"), 4, size=8)
    copy.load_state_dict(wrapper.state_dict())
    assert int(copy.filled) == 8 and torch.equal(copy.memory, wrapper.memory)


def test_evaluation_mode_does_not_fill_the_memory():
    wrapper = CrossBatchMemory(get("contrastive"), 2, size=4).eval()
    wrapper(torch.randn(4, 2), torch.tensor([0, 0, 1, 1]))
    assert int(wrapper.filled) == 0


def config(*overrides: str):
    return load_config(None, ["loss.name=contrastive", *overrides])


def test_config_builds_the_wrapper_and_refuses_bad_memories():
    loss = build_loss(config("loss.memory={size: 16, start: 2}"), 5, 8, train_size=100)
    assert isinstance(loss, CrossBatchMemory) and (loss.size, loss.start) == (16, 2)
    with pytest.raises(ConfigError, match=r"loss.memory.size: 200 is larger than the 100 training samples"):
        build_loss(config("loss.memory.size=200"), 5, 8, train_size=100)
    with pytest.raises(ConfigError, match=r"loss.memory.size"):
        config("loss.memory.size=0")
    with pytest.raises(ConfigError, match=r"loss.memory.stop"):
        config("loss.memory={size: 4, stop: 1}")
    with pytest.raises(ConfigError, match=r"loss.memory: a cross-batch memory wraps pair-based"):
        config("loss.name=proxy_anchor", "loss.memory.size=4")
