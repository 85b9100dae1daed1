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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from deepmetric.distances import Distance
from deepmetric.losses.base import LOSSES
from deepmetric.losses.logits import masked_logsumexp, mined_samples
from deepmetric.losses.proxies import ClassWeightLoss, class_weights
from deepmetric.masks import PairIndices, TripletIndices


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
