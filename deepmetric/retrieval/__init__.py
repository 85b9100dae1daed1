"""Retrieval: an :class:`Index` of embeddings with labels and ids, searched by pluggable backends."""

from deepmetric.retrieval.backends import SEARCH_BACKENDS, SearchBackend
from deepmetric.retrieval.hamming import HammingBackend
from deepmetric.retrieval.index import Index, SearchResult

__all__ = ["SEARCH_BACKENDS", "HammingBackend", "Index", "SearchBackend", "SearchResult"]
