"""Data sources and decoding, separate from what is computed on them (``clipviz.analysis``)."""

from clipviz.data.decoding import batches, parallel_batches
from clipviz.data.sources import IMAGE_SUFFIXES, Source, open_source

__all__ = ["IMAGE_SUFFIXES", "Source", "batches", "open_source", "parallel_batches"]
