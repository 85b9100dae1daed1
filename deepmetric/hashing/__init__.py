"""Deep hashing: compact binary codes learned with metric-learning losses and searched by Hamming distance.

Importing this package registers the hashing losses (``dtsh``, ``dpsh``, ``dsh``, ``hashing``) in
:data:`deepmetric.losses.base.LOSSES`.
"""

from deepmetric.hashing.dpsh import DPSHLoss
from deepmetric.hashing.dsh import DSHLoss
from deepmetric.hashing.dtsh import DTSHLoss
from deepmetric.hashing.head import HashHead
from deepmetric.hashing.index import FaissBinaryIndex, HammingIndex
from deepmetric.hashing.metrics import evaluate_hashing
from deepmetric.hashing.objective import HashingLoss
from deepmetric.hashing.packing import as_words64, pack_bits, unpack_bits
from deepmetric.hashing.quantization import AlphaSchedule, bit_balance_penalty, quantization_penalty
from deepmetric.hashing.search import hamming_distances, hamming_knn, hamming_radius_search

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
