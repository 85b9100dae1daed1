"""Proxy-Anchor — Kim et al., "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020.

One learned proxy ``p`` per class, used as an anchor that pulls/pushes all batch embeddings at once.
With ``s(x, p)`` the cosine similarity, ``P`` all proxies, ``P+`` the proxies with a positive in the batch,
``X_p+`` the embeddings of class ``p`` and ``X_p-`` the others::

    L = 1/|P+| sum_{p in P+} log(1 + sum_{x in X_p+} exp(-alpha (s(x, p) - delta)))
      + 1/|P|  sum_{p in P}  log(1 + sum_{x in X_p-} exp( alpha (s(x, p) + delta)))

Defaults ``alpha = 32``, ``delta = 0.1``; proxies initialised kaiming-normal (fan over classes), as in
the paper's code. Multi-label data: with a ``N x C`` multi-hot label matrix a sample is a positive of
every proxy of its labels and a negative of the others.

Per-element losses are per proxy, ``l_p = |P|/|P+| [p in P+] pos_p + neg_p``, so that their mean (the
default reduction) is exactly ``L``. With mined ``indices`` only the mined samples enter the sums.

With the cosine similarity (the default) and no miner the loss runs as one autograd node with a hand-written
backward: ``log(1 + sum exp(z))`` has gradient ``softmax`` over ``{0} + z``, i.e. ``sigmoid(lse) softmax(z)``;
the similarities are computed as ``C x N`` (one softmax kernel per proxy row) and the normalisations are
handled as in :mod:`deepmetric.losses.cosine_softmax` (never materialised).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepmetric.distances import CosineSimilarity, Distance
from deepmetric.losses.base import LOSSES
from deepmetric.losses.cosine_softmax import cosine_matrix, cosine_matrix_backward, reduced
from deepmetric.losses.logits import masked_logsumexp, mined_samples, softmax_logsumexp, working_dtype
from deepmetric.losses.proxies import ClassWeightLoss, class_weights
from deepmetric.masks import PairIndices, TripletIndices


def _softplus_logsumexp(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, ``log(1 + sum exp(logits))`` and its gradient ``sigmoid(lse) softmax(logits)`` (entries pushed
    down by a huge offset count as absent: a row of only those gives 0 and a zero gradient)."""
    probs, lse = softmax_logsumexp(logits)
    return F.softplus(lse), probs.mul_(torch.sigmoid(lse).unsqueeze(1))


class _ProxyAnchor(torch.autograd.Function):
    """Per-proxy losses ``neg_p + |P| / |P+| pos_p`` (reduced by ``reduction``: ``none``, ``mean`` or ``sum``)
    for embeddings ``x`` (``N x D``), proxies (``C x D``) and the ``C x N`` 0/1 matrix ``positive``."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        proxies: torch.Tensor,
        positive: torch.Tensor,
        alpha: float,
        margin: float,
        reduction: str,
    ) -> torch.Tensor:
        needs_grad = any(ctx.needs_input_grad[:2])
        cosines, norms = cosine_matrix(proxies, x, needs_grad)  # C x N
        # Entries outside a group are pushed down by a huge finite offset: exp gives exactly 0.
        offset = torch.finfo(cosines.dtype).max / 8
        positive_logits = torch.add(cosines * -alpha, 1 - positive, alpha=-offset).add_(alpha * margin)
        negative_logits = torch.add(cosines * alpha, positive, alpha=-offset).add_(alpha * margin)
        pos_terms, pos_grad = _softplus_logsumexp(positive_logits)
        neg_terms, neg_grad = _softplus_logsumexp(negative_logits)
        # Each proxy's share of the positive average, rescaled so that the mean over proxies is L.
        pos_weight = len(proxies) / positive.amax(1).sum().clamp_min(1)
        losses = pos_terms.mul_(pos_weight).add_(neg_terms)
        if needs_grad:
            # dL/dcos = alpha (neg_grad - pos_weight pos_grad), per proxy row; the reduction is folded in.
            grad_scale = alpha / len(proxies) if reduction == "mean" else alpha
            ctx.save_for_backward(
                x, proxies, *norms, cosines, neg_grad.sub_(pos_grad.mul_(pos_weight)).mul_(grad_scale)
            )
        return reduced(losses, reduction)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        x, proxies, *norms, cosines, cosine_grad = ctx.saved_tensors
        cosine_grad = cosine_grad * (grad if grad.ndim == 0 else grad.unsqueeze(1))
        needs_x, needs_p = ctx.needs_input_grad[:2]
        grad_p, grad_x = cosine_matrix_backward(
            cosine_grad, cosines, proxies, x, tuple(norms), needs_p, needs_x
        )
        return grad_x, grad_p, None, None, None, None


@LOSSES.register("proxy_anchor")
class ProxyAnchorLoss(ClassWeightLoss):
    supports_multilabel = True

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        margin: float = 0.1,
        alpha: float = 32.0,
        distance: str | Distance | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(num_classes, embedding_size, distance=distance, reduction=reduction)
        self.margin = margin
        self.alpha = alpha
        self.proxies = class_weights(num_classes, embedding_size, "kaiming_normal")

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        if type(self.distance) is CosineSimilarity and indices is None:
            self.check_inputs(embeddings, labels, ref_embeddings)
            dtype = working_dtype(embeddings, self.proxies)
            classes = torch.arange(self.num_classes, device=labels.device)
            positive = torch.empty(self.num_classes, len(labels), dtype=dtype, device=labels.device)
            if labels.ndim == 1:
                torch.eq(classes.unsqueeze(1), labels.unsqueeze(0), out=positive)
            else:
                torch.ne(labels.T, 0, out=positive)
            reduction = self.fused_reduction(indices)
            return _ProxyAnchor.apply(
                embeddings.to(dtype), self.proxies.to(dtype), positive, self.alpha, self.margin, reduction
            )
        sims = self.class_logits(embeddings, labels, ref_embeddings, self.proxies)  # N x C
        # A sample is a positive of its class's proxy, or of every proxy of its labels (multi-hot).
        positive = F.one_hot(labels.long(), self.num_classes).bool() if labels.ndim == 1 else labels.bool()
        negative = ~positive
        if indices is not None:
            mined = mined_samples(indices, embeddings.shape[0], embeddings.device)[:, None]
            positive, negative = positive & mined, negative & mined
        pos_terms = masked_logsumexp(-self.alpha * (sims - self.margin), positive, dim=0, add_one=True)
        neg_terms = masked_logsumexp(self.alpha * (sims + self.margin), negative, dim=0, add_one=True)
        with_positives = positive.any(0)
        # Each proxy's share of the positive average, rescaled so that the mean over proxies is L.
        pos_weight = self.num_classes / with_positives.sum().clamp_min(1).to(sims.dtype)
        return neg_terms + pos_weight * pos_terms  # pos_terms is 0 for proxies without positives

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, margin={self.margin}, alpha={self.alpha}"
