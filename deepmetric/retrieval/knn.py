"""Exact k-nearest-neighbour search in torch, chunked so that no ``N x N`` matrix ever exists.

Queries are processed in blocks of rows: one block is the ``rows x N_gallery`` distance matrix between a
few queries and the whole gallery, and the number of rows is chosen so that the block (and its working
copies) fits in ``memory_budget_mb``. The gallery itself lives on the device once.

Ranking rules (shared by evaluation and retrieval):

* "closer" follows the :class:`~deepmetric.distances.Distance`: larger similarity, smaller distance.
  Euclidean distances are ranked by their squares (same order, one ``sqrt`` less per entry).
* Ties are broken deterministically: of two equally close gallery items the one with the lower gallery
  index ranks first.
* Excluded items (the query itself in leave-one-out, gallery items sharing the query's id) get the
  value ``-inf`` (similarities) or ``+inf`` (distances), so they rank after everything else; an index
  of ``-1`` in a result marks a slot that only an excluded item could have filled.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from deepmetric import linalg, native
from deepmetric.checks import check_embeddings
from deepmetric.distances import (
    CosineSimilarity,
    Distance,
    DotProductSimilarity,
    EuclideanDistance,
    SquaredEuclideanDistance,
    get_distance,
)

ArrayLike = torch.Tensor | np.ndarray

# Bytes of working memory per entry of a distance block: the float32 block, the temporaries of the
# matrix product / squared-norm sum, and the comparison masks of the tie-break.
BLOCK_BYTES_PER_ENTRY = 16
# Extra bytes per entry when the whole ranking of a block is sorted (values + int64 indices + masks).
SORT_BYTES_PER_ENTRY = 24
# Gallery columns sampled per block to bound each row's k-th best score (see topk_bounded).
PROBE_COLUMNS = 512
# A row with more candidates than this many per neighbour wanted is ranked by a plain top-k instead.
CANDIDATES_PER_K = 64
MIN_CANDIDATES = 4096
# Bytes per slot of a top-k result: a float32 value and an int64 index.
RESULT_BYTES_PER_SLOT = 12


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    return default_device() if device is None else torch.device(device)


def to_float_tensor(embeddings: ArrayLike, name: str, device: torch.device) -> torch.Tensor:
    """A finite float32 ``N x D`` tensor on ``device`` (ValueError naming ``name`` otherwise)."""
    tensor = torch.as_tensor(embeddings)
    if tensor.is_complex() or not (tensor.is_floating_point() or tensor.dtype in _INT_DTYPES):
        raise ValueError(f"{name} must hold real numbers, got dtype {tensor.dtype}")
    tensor = tensor.detach().to(device=device, dtype=torch.float32)
    check_embeddings(tensor, name)
    # in chunks: a whole-matrix temporary would double the embeddings' memory
    if not all(bool(torch.isfinite((part * part).sum(1)).all()) for part in tensor.split(CHECK_ROWS)):
        raise ValueError(f"{name} are too large: their squared norms overflow float32")
    return tensor


# Rows per chunk of the squared-norm check of :func:`to_float_tensor`.
CHECK_ROWS = 4096
_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def rows_per_block(num_gallery: int, memory_budget_mb: float, full_ranking: bool = False) -> int:
    """How many query rows fit in one block of ``num_gallery`` columns within ``memory_budget_mb``."""
    if memory_budget_mb <= 0:
        raise ValueError(f"memory_budget_mb must be positive, got {memory_budget_mb}")
    per_entry = BLOCK_BYTES_PER_ENTRY + (SORT_BYTES_PER_ENTRY if full_ranking else 0)
    return max(1, int(memory_budget_mb * 2**20) // (per_entry * max(1, num_gallery)))


def ranking_distance(distance: Distance) -> Distance:
    """The distance actually ranked: squared Euclidean stands in for Euclidean (same order)."""
    if type(distance) is EuclideanDistance:
        return SquaredEuclideanDistance(normalize_embeddings=distance.normalize_embeddings)
    return distance


def to_reported_values(values: torch.Tensor, distance: Distance) -> torch.Tensor:
    """Turn ranked values back into the values of ``distance`` (the square root for Euclidean)."""
    if type(distance) is EuclideanDistance:
        return torch.where(torch.isinf(values), values, values.clamp_min(0).sqrt())
    return values


@dataclass
class Block:
    """One block of query rows ``start:stop`` against the whole gallery.

    ``scores``: ``rows x N_gallery`` ranked values with excluded items set to the worst value.
    ``leave_one_out``: row ``i`` is gallery item ``start + i`` (excluded). ``id_matches``: boolean mask of
    gallery items sharing the row's id (excluded), or None without ids.
    """

    start: int
    stop: int
    scores: torch.Tensor
    leave_one_out: bool
    id_matches: torch.Tensor | None

    def exclude_from(self, mask: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (for all rows of the block, or for the block rows selected by ``rows``) with every
        excluded entry set to False."""
        mask = mask.clone()
        row_ids = torch.arange(self.start, self.stop, device=mask.device)
        if rows is not None:
            row_ids = row_ids[rows]
        if self.id_matches is not None:
            mask &= ~(self.id_matches if rows is None else self.id_matches[rows])
        if self.leave_one_out:
            mask[torch.arange(len(row_ids), device=mask.device), row_ids] = False
        return mask


def distance_blocks(
    query: torch.Tensor,
    gallery: torch.Tensor,
    distance: Distance,
    rows: int,
    leave_one_out: bool,
    query_ids: torch.Tensor | None = None,
    gallery_ids: torch.Tensor | None = None,
) -> Iterator[Block]:
    """Yield :class:`Block` s of ranked values. ``query``/``gallery`` must already be ``distance.prepare`` d.

    Every block's ``scores`` live in one reused buffer: use a block before asking for the next one.

    ``leave_one_out``: query ``i`` is gallery item ``i`` and is excluded from its own ranking.
    ``query_ids``/``gallery_ids`` (integer tensors): gallery items with the query's id are excluded too.
    """
    ranked = ranking_distance(distance)
    worst = -torch.inf if ranked.is_similarity else torch.inf
    buffer = query.new_empty(min(rows, len(query)), len(gallery))
    gallery_norms = (gallery * gallery).sum(1) if type(ranked) is SquaredEuclideanDistance else None
    for start in range(0, len(query), rows):
        stop = min(start + rows, len(query))
        scores = _pairwise_into(ranked, query[start:stop], gallery, gallery_norms, buffer[: stop - start])
        id_matches = None
        if query_ids is not None:
            id_matches = query_ids[start:stop, None] == gallery_ids[None, :]
            scores.masked_fill_(id_matches, worst)
        if leave_one_out:
            scores[torch.arange(stop - start), torch.arange(start, stop)] = worst
        yield Block(start, stop, scores, leave_one_out, id_matches)


def _pairwise_into(
    ranked: Distance,
    query: torch.Tensor,
    gallery: torch.Tensor,
    gallery_norms: torch.Tensor | None,
    out: torch.Tensor,
) -> torch.Tensor:
    """``ranked._pairwise(query, gallery)``, written into ``out`` for the built-in distances: reusing one
    buffer spares a fresh block allocation (and its page faults) per block, which costs about as much as
    the matrix product itself on a CPU. ``out`` must be contiguous."""
    if type(ranked) in (DotProductSimilarity, CosineSimilarity):
        return linalg.matmul_into(query, gallery.T, out)
    if type(ranked) is SquaredEuclideanDistance:
        linalg.matmul_into(query * -2, gallery.T, out)
        return out.add_(gallery_norms[None, :]).add_((query * query).sum(1, keepdim=True)).clamp_min_(0)
    return ranked._pairwise(query, gallery)


def _sort_by_value_then_index(
    values: torch.Tensor, indices: torch.Tensor, largest: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    by_index = indices.argsort(dim=1)
    values, indices = values.gather(1, by_index), indices.gather(1, by_index)
    by_value = values.sort(dim=1, descending=largest, stable=True).indices
    return values.gather(1, by_value), indices.gather(1, by_value)


def topk_deterministic(scores: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best entries of each row, ties broken by lower column index (``torch.topk`` does not).

    ``torch.topk`` picks the right values but, among entries equal to the k-th value, arbitrary columns.
    One extra entry tells which rows have such a tie across the boundary; only those are recomputed.
    """
    k = min(k, scores.shape[1])
    if k == 0:
        return scores[:, :0], torch.zeros(len(scores), 0, dtype=torch.long, device=scores.device)
    extra = min(k + 1, scores.shape[1])
    values, indices = scores.topk(extra, dim=1, largest=largest, sorted=True)
    ambiguous = (
        values[:, k - 1] == values[:, extra - 1] if extra > k else torch.zeros_like(values[:, 0], dtype=bool)
    )
    values, indices = _sort_by_value_then_index(values[:, :k], indices[:, :k], largest)
    if bool(ambiguous.any()):
        rows = scores[ambiguous]
        row_kth = values[ambiguous, k - 1 :]
        better = rows > row_kth if largest else rows < row_kth
        equal = rows == row_kth
        room = k - better.sum(1, keepdim=True)
        take = better | (equal & (equal.cumsum(1) <= room))
        exact_indices = take.nonzero()[:, 1].view(-1, k)
        exact_values = rows.gather(1, exact_indices)
        exact_values, exact_indices = _sort_by_value_then_index(exact_values, exact_indices, largest)
        values[ambiguous], indices[ambiguous] = exact_values, exact_indices
    return values, indices


def probe_columns(num_gallery: int, device: torch.device) -> torch.Tensor:
    """A fixed random sample of distinct gallery columns (seeded, so results never depend on the run)."""
    generator = torch.Generator().manual_seed(0)
    return torch.randperm(num_gallery, generator=generator)[:PROBE_COLUMNS].to(device)


def topk_bounded(
    scores: torch.Tensor,
    k: int,
    largest: bool,
    probe_values: torch.Tensor,
    row_k: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`topk_deterministic` without a top-k over whole rows.

    ``probe_values`` holds, per row, the scores of some *distinct* gallery items (``worst`` for padding).
    The ``k``-th best of them is a bound that at least ``k`` entries of the row reach, so the row's top
    ``k`` lie among the entries reaching it: one comparison pass over the block, then the few candidates
    are ranked on their own by :func:`topk_deterministic` of them in column order (which keeps the
    lower-index tie-break). Rows with very many candidates (no useful bound, massive ties) use
    :func:`topk_deterministic` instead.

    ``row_k``: a ``k`` per row (at most ``k``); slots beyond a row's ``k`` then hold the worst value and
    index ``-1``. The result is otherwise identical to ``topk_deterministic(scores, k, largest)``.
    """
    rows, width = scores.shape
    k = min(k, width)
    if k == 0 or rows == 0:
        return topk_deterministic(scores, k, largest)
    worst = -torch.inf if largest else torch.inf
    row_k = torch.full((rows,), k, device=scores.device) if row_k is None else row_k.clamp(1, k)
    if probe_values.shape[1] < k:
        probe_values = torch.cat([probe_values, probe_values.new_full((rows, k), worst)], 1)
    bound = probe_values.topk(k, dim=1, largest=largest, sorted=True).values.gather(1, (row_k - 1)[:, None])
    reached = scores >= bound if largest else scores <= bound
    cand_rows, cand_cols = reached.nonzero(as_tuple=True)  # row-major: columns ascend within a row
    del reached
    counts = torch.bincount(cand_rows, minlength=rows)
    if int(counts.max()) > max(CANDIDATES_PER_K * k, MIN_CANDIDATES):
        values, indices = topk_deterministic(scores, k, largest)
    else:
        # each row's candidates side by side, in column order, padded with the worst value
        slot = torch.arange(len(cand_rows), device=scores.device) - (counts.cumsum(0) - counts)[cand_rows]
        dense_values = scores.new_full((rows, max(int(counts.max()), k)), worst)
        dense_values[cand_rows, slot] = scores[cand_rows, cand_cols]
        dense_columns = torch.full_like(dense_values, -1, dtype=torch.long)
        dense_columns[cand_rows, slot] = cand_cols
        # candidates sit in column order, so the lower-position tie-break is the lower-column one
        values, order = topk_deterministic(dense_values, k, largest)
        indices = dense_columns.gather(1, order)
    beyond = torch.arange(k, device=scores.device)[None, :] >= row_k[:, None]
    return values.masked_fill_(beyond, worst), indices.masked_fill_(beyond, -1)


def native_selection(device: torch.device) -> bool:
    """Whether blocks on ``device`` are ranked by the native streaming top-k (CPU, kernels built)."""
    return device.type == "cpu" and native.available()


def topk_native(scores: torch.Tensor, k: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`topk_deterministic` in one pass over the block (:class:`deepmetric.native.TopK`); excluded
    entries (``+-inf``) come out as the worst value with index ``-1``, as :func:`mark_excluded` marks them."""
    k = min(k, scores.shape[1])
    selection = native.TopK(len(scores), k, largest)
    selection.offer_rows(scores, 0, 0)
    return selection.result()


def symmetric_topk(
    embeddings: torch.Tensor,
    distance: Distance,
    k: int,
    ids: torch.Tensor | None = None,
    band: int = 1024,
    width: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Leave-one-out ``k`` nearest neighbours of every row of ``embeddings`` (CPU, ``distance.prepare`` d)
    among the other rows: ``(ranked values, indices)`` as :func:`topk_native` gives them.

    The distance matrix is symmetric, so only its upper triangle is computed, in tiles of ``band`` rows x
    ``width`` columns: each tile serves its rows (:meth:`~deepmetric.native.TopK.offer_rows`) and,
    transposed, its columns right of the band's own square (:meth:`~deepmetric.native.TopK.offer_columns`):
    half the matrix products of a block-by-block scan (the streaming selection takes candidates in any
    order). ``ids``: rows sharing an id are excluded from each other's lists.
    """
    ranked = ranking_distance(distance)
    worst = -torch.inf if ranked.is_similarity else torch.inf
    n = len(embeddings)
    k = min(k, n)  # as a block-by-block scan: slots beyond the n - 1 others hold -1
    width = max(width, band)  # a band's own square must lie within its first tile
    norms = (embeddings * embeddings).sum(1) if type(ranked) is SquaredEuclideanDistance else None
    selection = native.TopK(n, k, ranked.is_similarity)
    buffer = embeddings.new_empty(band * width)
    # Tiles nearest the diagonal first: every row then meets a first tile's worth of candidates through
    # the cheap row pass, and its bound is high by the time the column pass (one scattered write per
    # candidate) reaches it.
    tiles = sorted(
        ((i0, j0) for i0 in range(0, n, band) for j0 in range(i0, n, width)), key=lambda t: t[1] - t[0]
    )
    for i0, j0 in tiles:
        i1, j1 = min(i0 + band, n), min(j0 + width, n)
        block = buffer[: (i1 - i0) * (j1 - j0)].view(i1 - i0, j1 - j0)
        block = _pairwise_into(ranked, embeddings[i0:i1], embeddings[j0:j1], _part(norms, j0, j1), block)
        if ids is not None:
            block.masked_fill_(ids[i0:i1, None] == ids[None, j0:j1], worst)
        if j0 == i0:
            block.fill_diagonal_(worst)
        selection.offer_rows(block, j0, i0)
        transposed_from = max(j0, i1)  # the band's square was offered whole, row by row
        if transposed_from < j1:
            selection.offer_columns(block[:, transposed_from - j0 :], i0, transposed_from)
    return selection.result()


def native_state_bytes(k: int) -> int:
    """Bytes per query row of the native streaming selection: ``2k + 32`` candidates of 8 bytes (see
    :class:`~deepmetric.native.TopK`), a count and a bound, plus the row's result (float32 + int64)."""
    return (2 * k + 32) * 8 + 12 + RESULT_BYTES_PER_SLOT * k


def streaming_topk_bands(
    query: torch.Tensor,
    gallery: torch.Tensor | None,
    distance: Distance,
    k: int,
    query_ids: torch.Tensor | None = None,
    gallery_ids: torch.Tensor | None = None,
    memory_budget_mb: float = 512,
    max_rows: int | None = None,
    band: int = 1024,
    width: int = 4096,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """``(start, ranked values, indices)`` of the ``k`` nearest gallery items of the queries ``start ..``,
    band after band (at most ``max_rows`` each), through the native streaming selection (CPU,
    ``distance.prepare`` d), as :func:`topk_native` gives them. ``gallery=None``: leave-one-out among the
    queries. ``query_ids``/``gallery_ids``: items sharing an id are excluded.

    Queries go in bands of ``band`` rows, each scanning the gallery in tiles of ``width`` columns: tiles
    of 16 MiB are ranked while still in cache, and a band's state is its own (no ``N x N`` anything). In
    leave-one-out, when the selection state of every query (:func:`native_state_bytes`) fits in
    ``memory_budget_mb`` with one tile, :func:`symmetric_topk` does half the matrix products instead.
    Otherwise bands shrink until one band's state and tile fit in the budget.
    """
    n = len(query)
    budget = memory_budget_mb * 2**20
    k = min(k, n if gallery is None else len(gallery))
    max_rows = n if max_rows is None else max_rows
    if gallery is None and n * native_state_bytes(k) + band * width * 4 <= budget:
        values, indices = symmetric_topk(query, distance, k, query_ids, band, width)
        for start in range(0, n, max_rows):
            yield start, values[start : start + max_rows], indices[start : start + max_rows]
        return
    leave_one_out = gallery is None
    gallery = query if leave_one_out else gallery
    gallery_ids = query_ids if leave_one_out else gallery_ids
    band = max(1, min(band, max_rows, int(budget // (native_state_bytes(k) + width * 4))))
    ranked = ranking_distance(distance)
    worst = -torch.inf if ranked.is_similarity else torch.inf
    norms = (gallery * gallery).sum(1) if type(ranked) is SquaredEuclideanDistance else None
    buffer = query.new_empty(min(band, n) * width)
    for i0 in range(0, n, band):
        i1 = min(i0 + band, n)
        selection = native.TopK(i1 - i0, k, ranked.is_similarity)
        for j0 in range(0, len(gallery), width):
            j1 = min(j0 + width, len(gallery))
            block = buffer[: (i1 - i0) * (j1 - j0)].view(i1 - i0, j1 - j0)
            block = _pairwise_into(ranked, query[i0:i1], gallery[j0:j1], _part(norms, j0, j1), block)
            if query_ids is not None:
                block.masked_fill_(query_ids[i0:i1, None] == gallery_ids[None, j0:j1], worst)
            if leave_one_out and j0 < i1 and i0 < j1:  # the tile holds some queries' own entries
                own = torch.arange(max(i0, j0), min(i1, j1))
                block[own - i0, own - j0] = worst
            selection.offer_rows(block, j0, 0)
        values, indices = selection.result()
        yield i0, values, indices


def _part(norms: torch.Tensor | None, start: int, stop: int) -> torch.Tensor | None:
    return None if norms is None else norms[start:stop]


def full_ranking(scores: torch.Tensor, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row sorted closest first; a stable sort keeps lower column indices first among ties."""
    return scores.sort(dim=1, descending=largest, stable=True)


def mark_excluded(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Indices with ``-1`` where the slot holds an excluded item (value ``+-inf``)."""
    return torch.where(torch.isinf(values), torch.full_like(indices, -1), indices)


def encode_ids(
    query_ids: ArrayLike | list, gallery_ids: ArrayLike | list | None
) -> tuple[np.ndarray, np.ndarray]:
    """Map ids of any kind (ints, strings, paths) to shared int64 codes so they compare on the device."""
    query_ids = np.asarray(query_ids.cpu() if torch.is_tensor(query_ids) else query_ids)
    gallery_ids = query_ids if gallery_ids is None else gallery_ids
    gallery_ids = np.asarray(gallery_ids.cpu() if torch.is_tensor(gallery_ids) else gallery_ids)
    if query_ids.ndim != 1 or gallery_ids.ndim != 1:
        raise ValueError("query_ids and gallery_ids must be 1-D (one id per embedding)")
    try:
        _, codes = np.unique(np.concatenate([query_ids, gallery_ids]), return_inverse=True)
    except TypeError:
        raise ValueError("query_ids and gallery_ids must be ids of one comparable kind") from None
    codes = codes.reshape(-1).astype(np.int64)
    return codes[: len(query_ids)], codes[len(query_ids) :]


def knn(
    query: ArrayLike,
    k: int,
    gallery: ArrayLike | None = None,
    distance: str | Distance = "cosine",
    query_ids: ArrayLike | list | None = None,
    gallery_ids: ArrayLike | list | None = None,
    memory_budget_mb: float = 512,
    device: str | torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``k`` nearest gallery items of every query: ``(values, indices)``, both ``N_query x k``.

    With ``gallery=None`` the queries are searched among themselves, leaving each query out of its own
    list (leave-one-out). ``values`` are the distances or similarities of ``distance``; slots that only
    excluded items could fill get index ``-1`` and value ``+-inf``. Results are returned on the CPU.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not memory_budget_mb > 0:
        raise ValueError(f"memory_budget_mb must be positive, got {memory_budget_mb}")
    device = resolve_device(device)
    distance = get_distance(distance)
    query_t = to_float_tensor(query, "query", device)
    gallery_t = query_t if gallery is None else to_float_tensor(gallery, "gallery", device)
    if gallery_t.shape[1] != query_t.shape[1]:
        raise ValueError(f"gallery has dimension {gallery_t.shape[1]} but query has {query_t.shape[1]}")
    q_codes = g_codes = None
    if query_ids is not None or gallery_ids is not None:
        if query_ids is None or (gallery is not None and gallery_ids is None):
            raise ValueError("query_ids and gallery_ids must be given together")
        q_np, g_np = encode_ids(query_ids, gallery_ids)
        if len(q_np) != len(query_t) or len(g_np) != len(gallery_t):
            raise ValueError("there must be one id per query and one per gallery embedding")
        q_codes, g_codes = torch.from_numpy(q_np).to(device), torch.from_numpy(g_np).to(device)
    query_t, gallery_t = distance.prepare(query_t), distance.prepare(gallery_t)
    largest = distance.is_similarity
    if native_selection(device):
        bands = streaming_topk_bands(
            query_t, None if gallery is None else gallery_t, distance, k, q_codes, g_codes, memory_budget_mb
        )
        values, indices = (torch.cat(parts) for parts in zip(*((v, i) for _, v, i in bands), strict=True))
        return to_reported_values(values, distance), indices
    all_values, all_indices = [], []
    rows = rows_per_block(len(gallery_t), memory_budget_mb)
    for block in distance_blocks(query_t, gallery_t, distance, rows, gallery is None, q_codes, g_codes):
        values, indices = topk_deterministic(block.scores, k, largest)
        all_values.append(to_reported_values(values, distance).cpu())
        all_indices.append(mark_excluded(values, indices).cpu())
    return torch.cat(all_values), torch.cat(all_indices)
