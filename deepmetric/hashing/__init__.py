"""Deep hashing: compact binary codes learned with metric-learning losses and searched by Hamming distance.

The hashing losses (``dtsh``, ``dpsh``, ``dsh``, ``hashing``) and their quantization penalties live with the
other losses in :mod:`deepmetric.losses` (registered by importing that package), the hash head with the other
heads in :mod:`deepmetric.models`; they are re-exported here.
"""

from deepmetric.hashing.index import FaissBinaryIndex, HammingIndex
from deepmetric.hashing.metrics import evaluate_hashing
from deepmetric.hashing.packing import as_words64, pack_bits, unpack_bits
from deepmetric.hashing.search import hamming_distances, hamming_knn, hamming_radius_search
from deepmetric.losses.dpsh import DPSHLoss
from deepmetric.losses.dsh import DSHLoss
from deepmetric.losses.dtsh import DTSHLoss
from deepmetric.losses.hashing import HashingLoss
from deepmetric.losses.quantization import AlphaSchedule, bit_balance_penalty, quantization_penalty
from deepmetric.models.hash_head import HashHead

__all__ = [
    "AlphaSchedule",
    "DPSHLoss",
    "DSHLoss",
    "DTSHLoss",
    "FaissBinaryIndex",
    "HammingIndex",
    "HashHead",
    "HashingLoss",
    "as_words64",
    "bit_balance_penalty",
    "evaluate_hashing",
    "hamming_distances",
    "hamming_knn",
    "hamming_radius_search",
    "pack_bits",
    "quantization_penalty",
    "unpack_bits",
]
