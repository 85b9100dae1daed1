"""Fused cosine-softmax cross-entropy: the whole head of NormSoftmax, CosFace, ArcFace and Proxy-NCA as one
autograd node.

Per sample ``i`` with class ``y_i``, unit vectors ``u_i = x_i / ||x_i||`` (or ``x_i`` itself without
normalisation) and ``v_c = w_c / ||w_c||``::

    c_{i,c} = u_i . v_c,    z_{i,c} = s c_{i,c}  (c != y_i),    z_{i,y_i} = s f(c_{i,y_i})
    l_i     = log sum_c exp(z_{i,c}) - z_{i,y_i}

with scale ``s`` and target-logit function ``f`` (the margin; identity for NormSoftmax). The gradient is
written out: ``dl/dz = softmax(z) - onehot(y)``, times ``s`` and ``f'`` on the target column, then one
product per side (``dU = dC V``, ``dV = dCᵀ U``) and the backward of the two normalisations. Autograd's
generic graph of the same computation holds 20-30 nodes, whose dispatch dominates a step at the batch
sizes metric learning uses, and allocates several ``N x D`` intermediates (page faults on CPU).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from deepmetric.losses.logits import softmax_logsumexp

# F.normalize's default: norms below it are clamped, so zero vectors stay finite.
NORM_EPS = 1e-12

Margin = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def inverse_norms(x: torch.Tensor, needs_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``1 / max(||x_i||, eps)`` per row (``F.normalize``'s denominator), and, when the gradient is needed, its
    square where the norm was not clamped and 0 where it was (the weight of the normalisation's radial
    gradient, which a clamped, constant denominator does not have)."""
    norms = torch.linalg.vector_norm(x, dim=1)
    inverse = norms.clamp_min(NORM_EPS).reciprocal_()
    if not needs_grad:
        return inverse, None
    return inverse, torch.ge(norms, NORM_EPS, out=torch.empty_like(norms)).mul_(inverse).mul_(inverse)


Norms = tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor | None]


def cosine_matrix(
    a: torch.Tensor, b: torch.Tensor, needs_grad: bool, normalize_a: bool = True
) -> tuple[torch.Tensor, Norms]:
    """``C = (A Bᵀ) / (||a|| ||b||ᵀ)`` (``A``'s rows unnormalised without ``normalize_a``) without
    materialising normalised copies, and the :func:`inverse_norms` of both sides for
    :func:`cosine_matrix_backward`: ``(inv_a, radial_a, inv_b, radial_b)``."""
    inv_a, radial_a = inverse_norms(a, needs_grad) if normalize_a else (None, None)
    inv_b, radial_b = inverse_norms(b, needs_grad)
    cosines = torch.mm(a, b.T).mul_(inv_b)
    if inv_a is not None:
        cosines *= inv_a.unsqueeze(1)
    return cosines, (inv_a, radial_a, inv_b, radial_b)


def cosine_matrix_backward(
    cosine_grad: torch.Tensor,
    cosines: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    norms: Norms,
    needs_a: bool,
    needs_b: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The gradients in ``a`` and ``b`` of :func:`cosine_matrix` given ``dC`` (overwritten): the gradient of a
    row normalisation, ``(dU - u (u.dU)) / ||a||``, is ``H B - a (u.dU) / ||a||²`` with
    ``H = dC / (||a|| ||b||ᵀ)`` and ``u_i.dU_i = sum_j dC_ij C_ij`` (and the same for ``b`` by columns)."""
    inv_a, radial_a, inv_b, radial_b = norms
    radial = cosine_grad * cosines  # u_i.dU_i summed over columns, v_j.dV_j over rows
    raw_grad = cosine_grad.mul_(inv_b)
    if inv_a is not None:
        raw_grad *= inv_a.unsqueeze(1)
    grad_a = grad_b = None
    if needs_a:
        grad_a = torch.mm(raw_grad, b)
        if inv_a is not None:
            grad_a.addcmul_(a, radial.sum(1).mul_(radial_a).unsqueeze(1), value=-1)
    if needs_b:
        grad_b = torch.mm(raw_grad.T, a)
        grad_b.addcmul_(b, radial.sum(0).mul_(radial_b).unsqueeze(1), value=-1)
    return grad_a, grad_b


def reduced(losses: torch.Tensor, reduction: str) -> torch.Tensor:
    """``losses`` reduced inside a fused node: ``mean``, ``sum``, or ``none`` (unchanged)."""
    if reduction == "mean":
        return losses.mean()
    return losses.sum() if reduction == "sum" else losses


class _CosineCrossEntropy(torch.autograd.Function):
    """Neither ``u`` nor ``v`` is materialised (:func:`cosine_matrix`): only ``N x C`` temporaries arise
    besides the products' outputs."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        scale: float,
        normalize_x: bool,
        margin: Margin | None,
        reduction: str,
    ) -> torch.Tensor:
        needs_grad = any(ctx.needs_input_grad[:2])
        cosines, norms = cosine_matrix(x, weight, needs_grad, normalize_x)
        target_index = labels.unsqueeze(1)
        target_cosine = cosines.gather(1, target_index)
        target, slope = (target_cosine, None) if margin is None else margin(target_cosine)
        logits = cosines * scale
        logits.scatter_(1, target_index, target * scale)
        probs, lse = softmax_logsumexp(logits)  # the probabilities are the backward's
        losses = lse.sub_(target.squeeze(1), alpha=scale)
        if needs_grad:
            # The reduction is folded in: the incoming gradient of a mean or sum is one number.
            ctx.grad_scale = scale / len(losses) if reduction == "mean" else scale
            ctx.save_for_backward(x, weight, *norms, cosines, probs, target_index, slope)
        return reduced(losses, reduction)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        x, weight, *norms, cosines, probs, target_index, slope = ctx.saved_tensors
        scaled_grad = (grad if grad.ndim == 0 else grad.unsqueeze(1)) * ctx.grad_scale
        cosine_grad = probs * scaled_grad  # dl/dz = softmax - onehot, on the target column through f'
        target_grad = probs.gather(1, target_index).sub_(1).mul_(scaled_grad)
        if slope is not None:
            target_grad *= slope
        cosine_grad.scatter_(1, target_index, target_grad)
        grad_x, grad_w = cosine_matrix_backward(
            cosine_grad, cosines, x, weight, tuple(norms), *ctx.needs_input_grad[:2]
        )
        return grad_x, grad_w, None, None, None, None, None


def cosine_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    scale: float,
    normalize_x: bool = True,
    margin: Margin | None = None,
    reduction: str = "none",
) -> torch.Tensor:
    """Per-sample ``l_i`` of the module docstring for embeddings ``x`` (``N x D``), class weights ``weight``
    (``C x D``, always normalised) and class ids ``labels``.

    ``margin`` maps the ``N x 1`` target cosines to ``(f(c), f'(c))`` (``f'`` None for a slope of 1), without
    autograd; None is the identity. ``x`` and ``weight`` must share a floating dtype. ``reduction``: ``none``
    (per-sample losses), ``mean`` or ``sum``.
    """
    if reduction not in ("none", "mean", "sum"):
        raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    return _CosineCrossEntropy.apply(x, weight, labels.long(), scale, normalize_x, margin, reduction)
