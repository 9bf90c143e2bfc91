"""Stage 1: prompt sets in, per-layer activations out (HDF5 caches).

- :mod:`~geomprobe.activations.datasets`: bundled and user prompt sets, chat rendering.
- :mod:`~geomprobe.activations.collect`: run a model with hooks and pool tokens.
- :mod:`~geomprobe.activations.format`, :mod:`~geomprobe.activations.writer`,
  :mod:`~geomprobe.activations.store`: the HDF5 cache format, writing it, reading it.
- :mod:`~geomprobe.activations.segments`: crash-safe resumable parts.
- :mod:`~geomprobe.activations.distributed` and :mod:`~geomprobe.activations.merge`: shards.
- :mod:`~geomprobe.activations.blocks`: reading layers larger than memory in row blocks.
"""

from geomprobe.activations.store import CacheFile, open_cache, read_activations, read_labels, write_cache

__all__ = ["CacheFile", "open_cache", "read_activations", "read_labels", "write_cache"]
