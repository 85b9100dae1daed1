"""Cross-batch memory (XBM, Wang et al. 2020, "Cross-Batch Memory for Embedding Learning").

Embeddings drift slowly once training has settled, so the embeddings of past batches remain useful
references: :class:`CrossBatchMemory` keeps the last ``size`` (detached) embeddings and labels in a ring
buffer and, from iteration ``start`` on, adds ``weight`` times the wrapped pair-based loss of the batch
against that memory to the loss of the batch against itself:

    loss = L(batch, batch, mined indices) + weight * L(batch vs memory)       (memory: earlier batches)

The batch enters the memory *after* the loss, so no sample is ever compared with itself. Under torchrun
the trainer hands the loss the gathered global batch, so every rank fills the same memory from the whole
batch. The memory is a set of buffers: checkpoints save it and a resumed run continues with it.
"""

from __future__ import annotations

import torch
from torch import nn

from deepmetric.losses.base import MetricLoss


class CrossBatchMemory(nn.Module):
    """Wraps a pair-based ``loss`` (one that accepts ``ref_embeddings``) with a memory of ``size`` past
    embeddings. Batches are stored from the ``start``-th training call on (counted from 0: the first
    iterations' embeddings change too fast to be kept); the memory term applies once it holds any."""

    def __init__(
        self, loss: MetricLoss, embedding_size: int, size: int, start: int = 0, weight: float = 1.0
    ) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"memory size must be > 0, got {size}")
        if start < 0:
            raise ValueError(f"memory start must be >= 0, got {start}")
        if weight <= 0:
            raise ValueError(f"memory weight must be > 0, got {weight}")
        self.loss, self.size, self.start, self.weight = loss, size, start, weight
        self.register_buffer("memory", torch.zeros(size, embedding_size))
        self.register_buffer("memory_labels", torch.zeros(size, dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("position", torch.zeros((), dtype=torch.long))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(
        self, embeddings: torch.Tensor, labels: torch.Tensor, indices: tuple | None = None
    ) -> torch.Tensor:
        labels = torch.as_tensor(labels, device=embeddings.device)
        if labels.ndim != 1:
            raise ValueError("cross-batch memory needs 1-D class labels")
        loss = self.loss(embeddings, labels, indices)
        filled = int(self.filled)
        if filled > 0:
            memory_loss = self.loss(
                embeddings,
                labels,
                # copies: the batch is written into the buffers below, before the backward pass
                ref_embeddings=self.memory[:filled].clone(),
                ref_labels=self.memory_labels[:filled].clone(),
            )
            loss = loss + self.weight * memory_loss
        if self.training:
            if int(self.calls) >= self.start:
                self._enqueue(embeddings.detach(), labels)
            self.calls += 1
        return loss

    @torch.no_grad()
    def _enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Write the batch into the ring buffer, overwriting the oldest entries."""
        count = min(len(embeddings), self.size)
        embeddings, labels = embeddings[-count:], labels[-count:]
        slots = (int(self.position) + torch.arange(count, device=self.memory.device)) % self.size
        self.memory[slots] = embeddings.to(self.memory.dtype)
        self.memory_labels[slots] = labels
        self.position.fill_((int(self.position) + count) % self.size)
        self.filled.fill_(min(int(self.filled) + count, self.size))
