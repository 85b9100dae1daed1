"""Training on several processes with ``torch.distributed``: one process per device, started by torchrun.

    torchrun --nproc_per_node 4 -m deepmetric.cli train config.yaml          # one machine, 4 GPUs

Every helper here is a no-op in a single process, so the trainer calls them unconditionally and
single-process training is unchanged. The process group is joined from torchrun's environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): backend ``nccl`` and device
``cuda:LOCAL_RANK`` on GPUs, ``gloo`` on CPUs. The model runs under ``DistributedDataParallel``; the loss
and the miner see the *global* batch, gathered from all ranks with :func:`gather_batch`.

Why the loss on the gathered batch is not scaled
------------------------------------------------
``W`` ranks; rank ``r`` embeds its own batch, ``x_r = f_θ(b_r)``. The global batch is
``X = [x_0; ...; x_{W-1}]`` (rank order) with labels ``Y``. A single process computing the loss over the
whole global batch gets

    ∇θ L(X, Y) = Σ_r J_rᵀ ∂L/∂x_r            (J_r = ∂x_r/∂θ, ∂L/∂x_r = rank r's rows of ∂L/∂X).

Here every rank ``s`` gathers ``X`` and evaluates its own copy ``ℓ_s = L(X, Y)``. The gather's backward
all-reduces (sums) the gradient over ranks and keeps the local rows, so rank ``r`` back-propagates
``Σ_s ∂ℓ_s/∂x_r`` through its model and holds ``J_rᵀ Σ_s ∂ℓ_s/∂x_r``. DDP then *averages* over ranks:

    (1/W) Σ_r J_rᵀ Σ_s ∂ℓ_s/∂x_r = ∇θ [(1/W) Σ_s ℓ_s] = ∇θ L(X, Y),

the last step because every ``ℓ_s`` is the same number (same inputs, same code, same mined indices: the
per-iteration seed is the same on every rank). The world-size factor that cancels DDP's ``1/W`` comes
from the all-reduce *sum*, so the loss is used as it is: the logged loss is the true global-batch loss
and the gradients are exactly the single-process ones (``tests/test_distributed.py`` checks both).
PML's ``DistributedLossWrapper`` multiplies the loss by ``W`` instead because its gather passes no
gradient to the other ranks' rows (rank ``r`` holds only ``J_rᵀ ∂L/∂x_r``, and DDP's mean leaves
``∇θ L / W``); doing both would give ``W`` times the gradient. If ranks ever computed different losses,
the gradient is that of their mean.

Parameters of the loss (proxies, classifier weights) are replicated on every rank and trained by the same
optimizer; each replica's gradient ``∂ℓ_s/∂P`` is already the full global-batch gradient, so
:func:`average_gradients` *averages* them (the same mean-over-ranks objective as above, ``= ∂L/∂P``).
Averaging identical numbers changes nothing except keeping the replicas bitwise equal when a GPU kernel
is not deterministic; summing would be ``W`` times too large.

BatchNorm layers in training mode normalise with each rank's own batch statistics (as in any DDP
training); only the loss and the miner see the global batch. ``model.freeze_batchnorm`` avoids that.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

_owned_group = False  # True when setup() created the process group (teardown() then destroys it)


# ------------------------------------------------------------------ process group


def launched() -> bool:
    """Whether a launcher (torchrun) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_distributed() -> bool:
    """A process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0: the process that writes checkpoints, logs, metrics, embeddings and reports."""
    return rank() == 0


def local_rank() -> int:
    """This process's index on its machine (its GPU)."""
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    return rank() % max(torch.cuda.device_count(), 1)


def setup(device: torch.device) -> torch.device:
    """Join torchrun's process group (if launched by it) and return this process's device.

    ``device`` is the configured one: CUDA becomes ``cuda:LOCAL_RANK`` with backend ``nccl``, CPU uses
    ``gloo``. A process group the caller already initialised is used as it is. Alone, ``device`` comes
    back unchanged and nothing else happens.
    """
    global _owned_group
    already = dist.is_available() and dist.is_initialized()
    if not (already or launched()):
        return device
    if not dist.is_available():
        raise RuntimeError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but this PyTorch build has no torch.distributed"
        )
    if device.type == "cuda":
        index = local_rank()
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK={index} but this machine has {torch.cuda.device_count()} GPU(s): "
                "start at most one process per GPU (torchrun --nproc_per_node)"
            )
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    if not already:
        missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
        if missing:
            raise ValueError(
                f"WORLD_SIZE is set but {', '.join(missing)} are not: start the processes with torchrun"
            )
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        _owned_group = True
    elif device.type == "cpu" and dist.get_backend() == "nccl":
        raise ValueError("train.device is cpu but the process group uses nccl, which only moves CUDA tensors")
    return device


def teardown() -> None:
    """Destroy the process group if :func:`setup` created it."""
    global _owned_group
    if _owned_group and dist.is_initialized():
        dist.destroy_process_group()
    _owned_group = False


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first, the others after it (downloads, feature caches written once)."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (a picklable object, e.g. a dict of metrics)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ------------------------------------------------------------------ gathering rows


def _shapes(tensor: torch.Tensor) -> list[torch.Size]:
    """Every rank's shape of ``tensor`` (the number of dimensions must agree)."""
    local = torch.tensor(tensor.shape, dtype=torch.long, device=tensor.device)
    shapes = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(shapes, local)
    return [torch.Size(shape.tolist()) for shape in shapes]


def _gather_rows(tensor: torch.Tensor, shapes: list[torch.Size]) -> torch.Tensor:
    """Concatenate every rank's rows in rank order; ranks may hold different numbers of rows."""
    filled = [shape for shape in shapes if shape[0] > 0]
    if not filled:
        return tensor
    row_shape = filled[0][1:]
    most = max(shape[0] for shape in shapes)
    is_bool = tensor.dtype == torch.bool  # gloo cannot move bool tensors
    local = tensor.to(torch.uint8) if is_bool else tensor
    padded = local.new_zeros((most, *row_shape))
    padded[: local.shape[0]] = local.reshape(local.shape[0], *row_shape)
    parts = [torch.empty_like(padded) for _ in shapes]
    dist.all_gather(parts, padded.contiguous())
    rows = torch.cat([part[: shape[0]] for part, shape in zip(parts, shapes)])
    return rows.bool() if is_bool else rows


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order (no gradient); uneven sizes allowed."""
    if not is_distributed():
        return tensor
    return _gather_rows(tensor.detach(), _shapes(tensor))


class _GatherWithGradient(torch.autograd.Function):
    """Forward: all-gather the rows of every rank. Backward: all-reduce (sum) the gradient of the
    gathered rows over ranks and return this rank's rows (see the module docstring for why)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, shapes: list[torch.Size]) -> torch.Tensor:
        counts = [shape[0] for shape in shapes]
        ctx.start = sum(counts[: rank()])
        ctx.count = counts[rank()]
        return _gather_rows(tensor, shapes)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce works in place
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start : ctx.start + ctx.count], None


def gather_batch(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch: every rank's embeddings (gradients flow back to the local rows) and labels."""
    if not is_distributed():
        return embeddings, labels
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} rows but embeddings has {embeddings.shape[0]}")
    shapes = _shapes(embeddings)
    label_shapes = [torch.Size([shape[0], *labels.shape[1:]]) for shape in shapes]
    return _GatherWithGradient.apply(embeddings, shapes), _gather_rows(labels.detach(), label_shapes)


# ------------------------------------------------------------------ parameters and gradients


def average_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Average the gradients of replicated parameters that DDP does not manage (the loss's proxies).

    Ranks must agree on which parameters have a gradient; they do, as they compute the same loss.
    """
    if not is_distributed():
        return
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world_size()
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def broadcast_state(module: nn.Module, parameters: bool = True) -> None:
    """Give every rank rank 0's buffers (and parameters, unless ``parameters=False``) of ``module``.

    DDP broadcasts the model's buffers at the start of each training forward, then every rank updates
    its BatchNorm statistics with its own batch, so they differ again until the next forward: evaluation
    first takes rank 0's.
    """
    if not is_distributed():
        return
    tensors = [*module.parameters(), *module.buffers()] if parameters else list(module.buffers())
    with torch.no_grad():
        for tensor in tensors:
            dist.broadcast(tensor.data, src=0)


class _Forward(nn.Module):
    """The training forward of an :class:`~deepmetric.models.EmbeddingModel` as one module for DDP."""

    def __init__(self, model: nn.Module, features: bool) -> None:
        super().__init__()
        self.model = model
        self.features = features

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model.embed_features(inputs) if self.features else self.model(inputs)


def parallel_forward(
    model: nn.Module, features: bool, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's training forward: the model itself alone, under DistributedDataParallel otherwise.

    ``features=True``: inputs are cached backbone features and only the head runs. A backbone whose
    parameters still require gradients is then unused by the forward, which DDP must be told about.
    """
    forward = model.embed_features if features else model
    if not is_distributed() or not any(p.requires_grad for p in model.parameters()):
        return forward
    unused = features and any(p.requires_grad for p in model.backbone.parameters())
    return nn.parallel.DistributedDataParallel(
        _Forward(model, features),
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=unused,
    )


# ------------------------------------------------------------------ evaluation


def shard(count: int) -> range:
    """This rank's contiguous part of ``count`` items; sizes differ by at most one, some may be empty."""
    return range(rank() * count // world_size(), (rank() + 1) * count // world_size())


def embed_in_shards(
    embed: Callable[[torch.utils.data.Dataset], np.ndarray],
    dataset: torch.utils.data.Dataset,
    device: torch.device,
) -> np.ndarray:
    """``embed(dataset)`` with each rank embedding its shard; every rank gets all rows in dataset order."""
    if not is_distributed():
        return embed(dataset)
    part = shard(len(dataset))
    local = embed(torch.utils.data.Subset(dataset, part)) if len(part) else np.empty((0, 0), np.float32)
    return all_gather_rows(torch.from_numpy(np.ascontiguousarray(local)).to(device)).cpu().numpy()
