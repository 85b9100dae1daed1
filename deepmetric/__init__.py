"""deepmetric: deep metric learning and image retrieval for PyTorch.

train -> embed -> evaluate -> retrieve -> look: losses, miners and the P x K sampler (``deepmetric.losses``,
``deepmetric.miners``, ``deepmetric.samplers``), data sets and models (``deepmetric.data``,
``deepmetric.models``), config-driven training (``deepmetric.training``), retrieval metrics and indexes
(``deepmetric.evaluation``, ``deepmetric.retrieval``), binary codes (``deepmetric.hashing``) and reports
(``deepmetric.viz``). The command line is ``deepmetric`` (see ``deepmetric --help``).
"""

__version__ = "0.1.0"
