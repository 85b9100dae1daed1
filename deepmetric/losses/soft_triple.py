"""SoftTriple — Qian et al., "SoftTriple Loss: Deep Metric Learning Without Triplet Sampling", ICCV 2019.

``K`` learned centres ``w_c^k`` per class. The similarity of ``x`` to class ``c`` is a soft maximum over
its centres, with a softmax of temperature ``gamma``; the loss is a smoothed (``lambda``) softmax with a
margin ``delta`` on the target class, plus a regulariser that merges redundant centres::

    S_{i,c} = sum_k softmax_k(x_i . w_c^k / gamma) x_i . w_c^k
    l_i     = -log( exp(lambda (S_{i,y_i} - delta))
                    / (exp(lambda (S_{i,y_i} - delta)) + sum_{c != y_i} exp(lambda S_{i,c})) )
    R(w)    = sum_c sum_{t < k} ||w_c^t - w_c^k|| / (C K (K - 1))         (normalised centres)
    L       = mean_i l_i + tau R(w)

Defaults ``K = 10``, ``lambda = 20``, ``gamma = 0.1``, ``tau = 0.2``, ``delta = 0.01``; centres
initialised kaiming-uniform and compared by cosine similarity (embeddings and centres normalised).
Per-element losses are ``l_i + tau R(w)``, so their mean is ``L``. The square root of ``R`` is zero-safe
(the paper's code adds ``1e-5`` under it instead).

With the cosine similarity (the default) ``l_i`` runs as one autograd node with a hand-written backward:
``dS_{i,c}/ds_{i,c,k} = p_k (1 + (s_{i,c,k} - S_{i,c}) / gamma)`` (``p`` the softmax over centres), and the
normalisations are handled as in :mod:`deepmetric.losses.cosine_softmax` (never materialised).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepmetric.distances import CosineSimilarity, Distance, safe_sqrt
from deepmetric.losses.base import LOSSES
from deepmetric.losses.cosine_softmax import cosine_matrix, cosine_matrix_backward, reduced
from deepmetric.losses.logits import softmax_logsumexp, working_dtype
from deepmetric.losses.proxies import ClassWeightLoss, class_weights
from deepmetric.masks import PairIndices, TripletIndices


class _SoftTripleCrossEntropy(torch.autograd.Function):
    """``l_i`` (reduced by ``reduction``: ``none``, ``mean`` or ``sum``) for embeddings ``x`` (``N x D``) and
    centres (``C K x D``, class-major), both normalised, as one node."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        centers: torch.Tensor,
        labels: torch.Tensor,
        centers_per_class: int,
        la: float,
        gamma: float,
        margin: float,
        reduction: str,
    ) -> torch.Tensor:
        needs_grad = any(ctx.needs_input_grad[:2])
        cosines, norms = cosine_matrix(x, centers, needs_grad)
        cosines = cosines.view(len(x), -1, centers_per_class)
        if gamma > 2 / 80:
            # |cos| <= 1, so exp((cos - 1) / gamma) lies in [exp(-2 / gamma), 1]: no overflow, and no row
            # underflows to all zeros for this gamma. Plain exp is several times faster on CPU than the
            # softmax kernel over an innermost dimension of K.
            center_probs = torch.mul(cosines, 1 / gamma).sub_(1 / gamma).exp_()
            center_probs /= center_probs.sum(2, keepdim=True)
        else:
            center_probs = torch.softmax(cosines * (1 / gamma), 2)
        relaxed = (center_probs * cosines).sum(2)  # S, N x C
        target_index = labels.unsqueeze(1)
        logits = relaxed * la
        target = logits.gather(1, target_index).sub_(la * margin)
        logits.scatter_(1, target_index, target)
        probs, lse = softmax_logsumexp(logits)  # the probabilities are the backward's
        losses = lse.sub_(target.squeeze(1))
        if needs_grad:
            ctx.grad_scale = la / len(losses) if reduction == "mean" else la
            ctx.gamma = gamma
            ctx.save_for_backward(x, centers, *norms, cosines, center_probs, relaxed, probs, target_index)
        return reduced(losses, reduction)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        x, centers, *norms, cosines, center_probs, relaxed, probs, target_index = ctx.saved_tensors
        scaled_grad = (grad if grad.ndim == 0 else grad.unsqueeze(1)) * ctx.grad_scale
        relaxed_grad = probs * scaled_grad  # dl/dS = la (softmax - onehot)
        relaxed_grad.scatter_(1, target_index, probs.gather(1, target_index).sub_(1).mul_(scaled_grad))
        # dS_c/ds_ck = p_k (1 + (s_ck - S_c) / gamma)
        cosine_grad = (cosines - relaxed.unsqueeze(2)).mul_(1 / ctx.gamma).add_(1)
        cosine_grad *= center_probs
        cosine_grad *= relaxed_grad.unsqueeze(2)
        grad_x, grad_centers = cosine_matrix_backward(
            cosine_grad.view(len(x), -1),
            cosines.view(len(x), -1),
            x,
            centers,
            tuple(norms),
            *ctx.needs_input_grad[:2],
        )
        return grad_x, grad_centers, None, None, None, None, None, None


@LOSSES.register("soft_triple")
class SoftTripleLoss(ClassWeightLoss):
    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        centers_per_class: int = 10,
        la: float = 20.0,
        gamma: float = 0.1,
        tau: float = 0.2,
        margin: float = 0.01,
        distance: str | Distance | None = None,
        reduction: str = "mean",
    ) -> None:
        if gamma <= 0:
            raise ValueError(f"gamma must be positive, got {gamma}")
        super().__init__(num_classes, embedding_size, distance=distance, reduction=reduction)
        self.centers_per_class = centers_per_class
        self.la = la
        self.gamma = gamma
        self.tau = tau
        self.margin = margin
        self.centers = class_weights(
            num_classes, embedding_size, "kaiming_uniform", per_class=centers_per_class
        )

    def class_similarities(
        self, embeddings: torch.Tensor, labels: torch.Tensor, ref_embeddings: torch.Tensor | None
    ) -> torch.Tensor:
        """``S``: the ``N x C`` soft-max similarity of each embedding to each class (inputs checked)."""
        centers = self.centers.reshape(-1, self.embedding_size)
        sims = self.class_logits(embeddings, labels, ref_embeddings, centers)
        sims = sims.reshape(-1, self.num_classes, self.centers_per_class)
        return (F.softmax(sims / self.gamma, dim=2) * sims).sum(2)

    def regulariser(self) -> torch.Tensor:
        """``R(w)``: mean distance between the centres of one class.

        Only the ``K (K - 1) / 2`` pairs ``t < k`` of each class are computed, from one batched Gram matrix
        of the normalised centres (``||a - b||^2 = 2 - 2 a.b`` for unit vectors).
        """
        k = self.centers_per_class
        centers = F.normalize(self.centers, dim=-1)  # C x K x D
        first, second = torch.triu_indices(k, k, offset=1, device=centers.device)
        cosines = (centers @ centers.transpose(1, 2))[:, first, second]
        return safe_sqrt(2 - 2 * cosines).sum() / (self.num_classes * k * (k - 1))

    def compute(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices: PairIndices | TripletIndices | None,
        ref_embeddings: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        reduction = "none"
        if type(self.distance) is CosineSimilarity:
            self.check_inputs(embeddings, labels, ref_embeddings)
            dtype = working_dtype(embeddings, self.centers)
            reduction = self.fused_reduction(indices)
            losses = _SoftTripleCrossEntropy.apply(
                embeddings.to(dtype),
                self.centers.reshape(-1, self.embedding_size).to(dtype),
                labels.long(),
                self.centers_per_class,
                self.la,
                self.gamma,
                self.margin,
                reduction,
            )
        else:
            sims = self.class_similarities(embeddings, labels, ref_embeddings)
            labels = labels.long()
            margins = torch.zeros_like(sims).scatter_(1, labels[:, None], self.margin)
            losses = F.cross_entropy(self.la * (sims - margins), labels, reduction="none")
        if self.tau > 0 and self.centers_per_class > 1:
            # Added to every sample's loss: once per sample in a fused sum.
            regulariser = self.tau * self.regulariser().to(losses.dtype)
            losses = losses + (len(embeddings) * regulariser if reduction == "sum" else regulariser)
        return self.select(losses, indices)

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, centers_per_class={self.centers_per_class}, la={self.la}, "
            f"gamma={self.gamma}, tau={self.tau}, margin={self.margin}"
        )
