"""deepmetric: deep metric learning and image retrieval for PyTorch.

train -> embed -> evaluate -> retrieve -> look: losses, miners and the P x K sampler (``deepmetric.losses``,
``deepmetric.miners``, ``deepmetric.samplers``), data sets and models (``deepmetric.data``,
``deepmetric.models``), config-driven training (``deepmetric.training``), retrieval metrics and indexes
(``deepmetric.evaluation``, ``deepmetric.retrieval``), binary codes (``deepmetric.hashing``) and reports
(``deepmetric.viz``). A trained run goes to work with ``deepmetric.load(run)`` (embed images, build and
search indexes: :mod:`deepmetric.api`). The command line is ``deepmetric`` (see ``deepmetric --help``).
"""

__version__ = "0.1.0"


def load(source, checkpoint: str = "auto", device: str = "cpu", threads: int | None = None):
    """A trained run's model (or an exported ONNX file) ready to embed and index images:
    see :func:`deepmetric.api.load` (imported on first use, so ``import deepmetric`` stays light)."""
    from deepmetric.api import load as load_model

    return load_model(source, checkpoint, device, threads)


def load_index(directory, model=None):
    """An image index saved by ``ImageIndex.save`` with its model: see :func:`deepmetric.api.load_index`."""
    from deepmetric.api import load_index as load_saved_index

    return load_saved_index(directory, model)
