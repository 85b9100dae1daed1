"""One ranking of the gallery for every query, computed once for every metric that reads it.

:func:`rank` checks and prepares the inputs and returns a :class:`Ranking`; iterating
:meth:`Ranking.bands` computes it, one band of queries at a time, so that at most one band's ranking is
held: memory stays within ``memory_budget_mb`` plus the embeddings. What the ranking keeps per query is
what the metrics declared they read (:class:`RankingNeeds`): the top ``k``, each query's top ``R``, the
whole ranking, the rank of the first relevant item however deep. Ranking rules (closer first, ties to the
lower gallery index, excluded items never ranked): :mod:`deepmetric.retrieval.knn`.

Relevance: a gallery item is relevant to a query when it has the query's class id, or, for multi-hot
labels, when they share at least one label; ``R`` counts a query's relevant gallery items (excluded ones
not counted).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from deepmetric.checks import check_labels
from deepmetric.distances import Distance, get_distance
from deepmetric.retrieval.knn import (
    ArrayLike,
    Block,
    distance_blocks,
    encode_ids,
    full_ranking,
    native_selection,
    probe_columns,
    resolve_device,
    rows_per_block,
    streaming_topk_bands,
    to_float_tensor,
    topk_bounded,
    topk_native,
)

DEFAULT_MEMORY_BUDGET_MB = 512
# Gallery items of the query's class used to bound its k-th best score (a subset is still a valid bound).
MAX_CLASS_PROBES = 1024
# Queries per band handed to the metrics from a ranking computed for all queries at once, at most.
RESULT_BAND = 8192
# Bytes per ranked slot of a band while metrics read it (relevance, labels, float64 precisions).
METRIC_BYTES_PER_SLOT = 64


@dataclass(frozen=True)
class RankingNeeds:
    """What metrics read from a ranking; :meth:`merge` combines the needs of several metrics.

    ``k``: the top ``k`` of every query. ``r_neighbours``: also each query's top ``R``. ``full``: the
    whole ranking. ``first_relevant``: the rank of the first relevant item, even beyond the top ``k``.
    """

    k: int = 1
    r_neighbours: bool = False
    full: bool = False
    first_relevant: bool = False

    def merge(self, other: RankingNeeds) -> RankingNeeds:
        return RankingNeeds(
            max(self.k, other.k),
            self.r_neighbours or other.r_neighbours,
            self.full or other.full,
            self.first_relevant or other.first_relevant,
        )


@dataclass
class Labels:
    """Labels on the device: int64 class codes (1-D) or boolean multi-hot rows (2-D)."""

    query: torch.Tensor
    gallery: torch.Tensor
    multi_hot: bool
    query_classes: np.ndarray  # one class code per query, for per-class averages and clustering

    def relevance(self, rows: slice) -> torch.Tensor:
        """``rows x N_gallery`` booleans: gallery items sharing a label with each query of ``rows``."""
        query = self.query[rows]
        if self.multi_hot:
            return (query.float() @ self.gallery.float().T) > 0
        return query[:, None] == self.gallery[None, :]


@dataclass
class RankedBand:
    """The ranking of the queries ``start .. start + len(has_relevant)``.

    ``has_relevant``: which of the band's queries have ``R > 0``; every other field covers only those
    (queries without a relevant item have nothing to rank for). ``values``/``indices``: ranked values and
    gallery indices, closest first (``k`` slots, or the whole ranking when ``full`` was needed); an empty or
    excluded slot has value ``+-inf`` and is never relevant. ``relevant``: which slots hold a relevant item.
    ``num_relevant``: ``R``. ``first_relevant_rank``: 1-based rank of the first relevant item (when
    needed). ``neighbour_labels``/``query_labels``: class codes (1-D labels; None for multi-hot ones).
    """

    start: int
    has_relevant: torch.Tensor
    values: torch.Tensor
    indices: torch.Tensor
    relevant: torch.Tensor
    num_relevant: torch.Tensor
    first_relevant_rank: torch.Tensor | None
    neighbour_labels: torch.Tensor | None
    query_labels: torch.Tensor

    @property
    def valid(self) -> torch.Tensor:
        """Slots holding a gallery item (not empty, not excluded)."""
        return ~torch.isinf(self.values)


def _to_numpy(values: ArrayLike | Sequence) -> np.ndarray:
    return values.detach().cpu().numpy() if torch.is_tensor(values) else np.asarray(values)


def prepare_labels(
    query_labels: ArrayLike,
    gallery_labels: ArrayLike | None,
    num_query: int,
    num_gallery: int,
    device: torch.device,
) -> Labels:
    """Check the labels against the embeddings and encode them on ``device`` (ValueError naming the issue)."""
    query_np = _to_numpy(query_labels)
    check_labels(query_np, num_query, "query_labels", "query_embeddings")
    gallery_np = query_np if gallery_labels is None else _to_numpy(gallery_labels)
    check_labels(gallery_np, num_gallery, "gallery_labels", "gallery_embeddings")
    if gallery_np.ndim != query_np.ndim:
        raise ValueError(
            "query_labels and gallery_labels must both be class ids or both be multi-hot matrices"
        )
    if query_np.ndim == 1:
        try:
            _, codes = np.unique(np.concatenate([query_np, gallery_np]), return_inverse=True)
        except TypeError:
            raise ValueError("labels must be class ids of one comparable kind") from None
        codes = torch.from_numpy(codes.reshape(-1).astype(np.int64)).to(device)
        query_codes = codes[:num_query]
        return Labels(query_codes, codes[num_query:], False, query_codes.cpu().numpy())
    if gallery_np.shape[1] != query_np.shape[1]:
        raise ValueError(
            f"multi-hot query_labels have {query_np.shape[1]} columns "
            f"but gallery_labels have {gallery_np.shape[1]}"
        )
    if not (np.issubdtype(query_np.dtype, np.number) or query_np.dtype == bool):
        raise ValueError(f"multi-hot labels must be numeric 0/1 matrices, got dtype {query_np.dtype}")
    _, row_classes = np.unique(query_np != 0, axis=0, return_inverse=True)
    return Labels(
        torch.from_numpy(query_np != 0).to(device),
        torch.from_numpy(gallery_np != 0).to(device),
        True,
        row_classes.reshape(-1),
    )


def _first_relevant_rank_outside_top(
    scores: torch.Tensor, relevant: torch.Tensor, largest: bool
) -> torch.Tensor:
    """1-based rank of each row's first relevant item over the whole row (ties: lower index first)."""
    worst = -torch.inf if largest else torch.inf
    masked = torch.where(relevant, scores, torch.full_like(scores, worst))
    best = (masked.max(1) if largest else masked.min(1)).values[:, None]
    at_best = scores == best
    first_index = (relevant & at_best).int().argmax(1)
    better = scores > best if largest else scores < best
    columns = torch.arange(scores.shape[1], device=scores.device)[None, :]
    tied_before = at_best & (columns < first_index[:, None])
    return better.sum(1) + tied_before.sum(1) + 1


@dataclass
class _Probes:
    """Gallery items whose scores bound each query's k-th best score (:func:`topk_bounded`).

    ``columns``: a fixed random sample of gallery columns; ``class_members``: per class code, up to
    ``MAX_CLASS_PROBES`` gallery indices of that class (``-1`` padding), None for multi-hot labels.
    """

    columns: torch.Tensor
    class_members: torch.Tensor | None


def _make_probes(labels: Labels, num_classes: int, num_gallery: int, device: torch.device) -> _Probes:
    columns = probe_columns(num_gallery, device)
    if labels.multi_hot:
        return _Probes(columns, None)
    counts = torch.bincount(labels.gallery, minlength=num_classes)
    starts = counts.cumsum(0) - counts
    slots = torch.arange(min(int(counts.max()), MAX_CLASS_PROBES), device=device)
    by_class = labels.gallery.argsort(stable=True)
    positions = (starts[:, None] + slots[None, :]).clamp_max(num_gallery - 1)
    members = torch.where(slots[None, :] < counts[:, None], by_class[positions], -1)
    return _Probes(columns, members)


def _probe_values(block: Block, labels: Labels, probes: _Probes, largest: bool) -> torch.Tensor:
    """Scores of distinct gallery items per query: its relevant items plus the sampled columns that are
    not relevant to it (so none is counted twice). Excluded items already hold the worst score."""
    worst = -torch.inf if largest else torch.inf
    sampled = block.scores.index_select(1, probes.columns)  # much faster than advanced indexing
    if probes.class_members is None:
        return sampled
    query_labels = labels.query[block.start : block.stop]
    sampled.masked_fill_(labels.gallery[probes.columns][None, :] == query_labels[:, None], worst)
    members = probes.class_members[query_labels]
    member_values = block.scores.gather(1, members.clamp_min(0)).masked_fill_(members < 0, worst)
    return torch.cat([member_values, sampled], 1)


def _relevant_counts(
    labels: Labels,
    gallery_counts: torch.Tensor,
    leave_one_out: bool,
    query_codes: torch.Tensor | None,
    gallery_codes: torch.Tensor | None,
) -> torch.Tensor:
    """``R`` of every query (1-D labels): the gallery items of its class less the excluded ones (itself in
    leave-one-out, the items with its id), counted once up front instead of over every block's rows."""
    counts = gallery_counts[labels.query]
    if query_codes is None:
        return counts - int(leave_one_out)
    # excluded relevant items are the gallery items with both the query's id and its class (itself included)
    num_labels = len(gallery_counts)
    keys, key_counts = torch.unique(gallery_codes * num_labels + labels.gallery, return_counts=True)
    query_keys = query_codes * num_labels + labels.query
    position = torch.searchsorted(keys, query_keys).clamp_max(len(keys) - 1)
    return counts - torch.where(keys[position] == query_keys, key_counts[position], 0)


class Ranking:
    """The gallery ranked for every query (see the module docstring); made by :func:`rank`.

    ``query``/``gallery``: the embeddings prepared for the distance (``gallery is query`` in leave-one-out);
    ``labels``: the encoded labels; :meth:`bands` computes the ranking.
    """

    def __init__(
        self,
        query: torch.Tensor,
        gallery: torch.Tensor,
        labels: Labels,
        distance: Distance,
        needs: RankingNeeds,
        leave_one_out: bool,
        query_codes: torch.Tensor | None,
        gallery_codes: torch.Tensor | None,
        memory_budget_mb: float,
    ) -> None:
        self.query, self.gallery, self.labels = query, gallery, labels
        self.distance, self.needs, self.leave_one_out = distance, needs, leave_one_out
        self.query_codes, self.gallery_codes = query_codes, gallery_codes
        self.memory_budget_mb = memory_budget_mb

    @property
    def num_queries(self) -> int:
        return len(self.query)

    def _neighbour_count(self, num_relevant: torch.Tensor) -> int:
        """How many ranked neighbours the metrics read: every K asked, and every row's ``R`` where needed."""
        k = max(self.needs.k, 1)
        return max(k, int(num_relevant.max())) if self.needs.r_neighbours else k

    def bands(self) -> Iterator[RankedBand]:
        """The ranking, band of queries after band, in query order."""
        labels, needs = self.labels, self.needs
        relevant_counts = None
        num_classes = 0
        if not labels.multi_hot:
            gallery_counts = torch.bincount(labels.gallery, minlength=int(labels.query.max()) + 1)
            num_classes = len(gallery_counts)
            relevant_counts = _relevant_counts(
                labels, gallery_counts, self.leave_one_out, self.query_codes, self.gallery_codes
            )
        if (
            native_selection(self.query.device)
            and not labels.multi_hot
            and not needs.full
            and not needs.first_relevant
        ):  # the native streaming selection ranks every query in one pass, symmetric in leave-one-out
            yield from self._streamed_bands(relevant_counts)
            return
        probes = _make_probes(labels, num_classes, len(self.gallery), self.query.device)
        rows = rows_per_block(len(self.gallery), self.memory_budget_mb, needs.full)
        blocks = distance_blocks(
            self.query,
            self.gallery,
            self.distance,
            rows,
            self.leave_one_out,
            self.query_codes,
            self.gallery_codes,
        )
        for block in blocks:
            yield self._block_band(block, relevant_counts, probes)

    def _streamed_bands(self, relevant_counts: torch.Tensor) -> Iterator[RankedBand]:
        k = self._neighbour_count(relevant_counts)
        budget_rows = int(self.memory_budget_mb * 2**20) // (METRIC_BYTES_PER_SLOT * k)
        gallery = None if self.leave_one_out else self.gallery
        streamed = streaming_topk_bands(
            self.query,
            gallery,
            self.distance,
            k,
            self.query_codes,
            self.gallery_codes,
            self.memory_budget_mb,
            max(1, min(RESULT_BAND, budget_rows)),
        )
        for start, values, indices in streamed:
            rows = slice(start, start + len(values))
            has_relevant = relevant_counts[rows] > 0
            kept_rows = has_relevant.nonzero().flatten()
            yield self._band(
                start, has_relevant, values[kept_rows], indices[kept_rows], relevant_counts[rows], None, None
            )

    def _band(
        self,
        start: int,
        has_relevant: torch.Tensor,
        values: torch.Tensor,
        indices: torch.Tensor,
        num_relevant: torch.Tensor,
        relevance: torch.Tensor | None,
        first_rank: torch.Tensor | None,
    ) -> RankedBand:
        """A :class:`RankedBand` from the ranked ``values``/``indices`` of the kept rows."""
        labels = self.labels
        kept_rows = has_relevant.nonzero().flatten()
        query_labels = labels.query[start : start + len(has_relevant)][kept_rows]
        safe = indices.clamp_min(0)  # empty slots (-1) are invalid anyway
        if relevance is not None:
            relevant = relevance[kept_rows].gather(1, safe)
        else:
            relevant = labels.gallery[safe] == query_labels[:, None]
        relevant &= ~torch.isinf(values)
        if first_rank is None and self.needs.first_relevant:
            first_rank = relevant.int().argmax(1) + 1
        return RankedBand(
            start,
            has_relevant,
            values,
            indices,
            relevant,
            num_relevant[kept_rows],
            first_rank,
            None if labels.multi_hot else labels.gallery[safe],
            query_labels,
        )

    def _block_band(self, block: Block, relevant_counts: torch.Tensor | None, probes: _Probes) -> RankedBand:
        """The :class:`RankedBand` of one block of distances (``relevant_counts``: None for multi-hot)."""
        labels, needs = self.labels, self.needs
        largest = self.distance.is_similarity
        rows = slice(block.start, block.stop)
        relevance = None
        if labels.multi_hot:
            relevance = block.exclude_from(labels.relevance(rows))
            num_relevant = relevance.sum(1)
        else:
            num_relevant = relevant_counts[rows]
        has_relevant = num_relevant > 0
        if not bool(has_relevant.any()):
            empty = block.scores.new_empty(0, 1)  # one slot: the band's metrics then reduce empty rows
            return self._band(block.start, has_relevant, empty, empty.long(), num_relevant, relevance, None)
        # rank every row of the block (no copy of the block), then keep the rows with a relevant item
        if needs.full:
            values, indices = full_ranking(block.scores, largest)
        elif native_selection(block.scores.device):
            values, indices = topk_native(block.scores, self._neighbour_count(num_relevant), largest)
        else:
            k, row_k = self._neighbour_count(num_relevant), None
            if needs.r_neighbours and not needs.first_relevant:  # the first relevant item may lie beyond R
                row_k = num_relevant.clamp_min(max(needs.k, 1))
            probe_values = _probe_values(block, labels, probes, largest)
            values, indices = topk_bounded(block.scores, k, largest, probe_values, row_k)
        kept_rows = has_relevant.nonzero().flatten()
        band = self._band(
            block.start, has_relevant, values[kept_rows], indices[kept_rows], num_relevant, relevance, None
        )
        if needs.first_relevant:
            found = band.relevant.any(1)
            if not bool(found.all()):
                missing_rows = kept_rows[~found]
                if relevance is None:
                    query_labels = labels.query[rows][missing_rows]
                    row_relevance = block.exclude_from(
                        labels.gallery[None, :] == query_labels[:, None], missing_rows
                    )
                else:
                    row_relevance = relevance[missing_rows]
                band.first_relevant_rank[~found] = _first_relevant_rank_outside_top(
                    block.scores[missing_rows], row_relevance, largest
                )
        return band


def _prepare(distance: Distance, embeddings: torch.Tensor, copy: bool) -> torch.Tensor:
    """``distance.prepare(embeddings)``; with ``copy=False`` the built-in L2 normalisation is done in place
    (the same operations, so the same values)."""
    if not copy and type(distance).prepare is Distance.prepare and distance.normalize_embeddings:
        return F.normalize(embeddings, dim=-1, out=embeddings)
    return distance.prepare(embeddings)


def rank(
    query: ArrayLike,
    query_labels: ArrayLike,
    gallery: ArrayLike | None = None,
    gallery_labels: ArrayLike | None = None,
    distance: str | Distance = "cosine",
    needs: RankingNeeds = RankingNeeds(),
    query_ids: ArrayLike | Sequence | None = None,
    gallery_ids: ArrayLike | Sequence | None = None,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    device: str | torch.device | None = None,
    copy: bool = True,
) -> Ranking:
    """Check and prepare the inputs of a ranking; iterate :meth:`Ranking.bands` to compute it.

    ``gallery=None``: leave-one-out, every query ranked against the other queries. ``query_ids`` /
    ``gallery_ids`` (ints, strings, paths): gallery items with the query's id are excluded from its
    ranking. ``memory_budget_mb``: working memory of the ranking, on top of the embeddings. ``device``:
    default CUDA when available. ``copy=False``: the distance's preparation (the L2 normalisation of
    ``cosine``) may overwrite the embeddings passed in, instead of holding a normalised copy of them.
    Bad input raises ValueError naming the problem.
    """
    if (gallery is None) != (gallery_labels is None):
        raise ValueError("gallery_embeddings and gallery_labels must be given together")
    leave_one_out = gallery is None
    if leave_one_out and gallery_ids is not None:
        raise ValueError("gallery_ids needs gallery_embeddings; in leave-one-out only query_ids are used")
    if not leave_one_out and (query_ids is None) != (gallery_ids is None):
        raise ValueError("query_ids and gallery_ids must be given together")
    if not memory_budget_mb > 0:
        raise ValueError(f"memory_budget_mb must be positive, got {memory_budget_mb}")

    device = resolve_device(device)
    distance = get_distance(distance)
    query_t = to_float_tensor(query, "query_embeddings", device)
    gallery_t = query_t if leave_one_out else to_float_tensor(gallery, "gallery_embeddings", device)
    if gallery_t.shape[1] != query_t.shape[1]:
        raise ValueError(
            f"gallery_embeddings have dimension {gallery_t.shape[1]} but query_embeddings have {query_t.shape[1]}"
        )
    labels = prepare_labels(query_labels, gallery_labels, len(query_t), len(gallery_t), device)
    query_codes = gallery_codes = None
    if query_ids is not None:
        query_np, gallery_np = encode_ids(query_ids, gallery_ids)
        if len(query_np) != len(query_t) or len(gallery_np) != len(gallery_t):
            raise ValueError("there must be one id per query embedding and one per gallery embedding")
        query_codes = torch.from_numpy(query_np).to(device)
        gallery_codes = torch.from_numpy(gallery_np).to(device)
    query_t = _prepare(distance, query_t, copy)
    gallery_t = query_t if leave_one_out else _prepare(distance, gallery_t, copy)
    return Ranking(
        query_t,
        gallery_t,
        labels,
        distance,
        needs,
        leave_one_out,
        query_codes,
        gallery_codes,
        memory_budget_mb,
    )
