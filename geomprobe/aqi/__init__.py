"""The AQI stage: exact cluster-separation indices and the Alignment Quality Index of a cache's layers.

Modules, one concept each (docs/aqi.md explains the maths, docs/architecture.md the layout):

- :mod:`~geomprobe.aqi.validation`: input checks, label encoding, the two-class label choice
- :mod:`~geomprobe.aqi.stats`: per-cluster statistics (counts, centroids, scatter, mean distance),
  accumulated over row blocks; shared by every path
- :mod:`~geomprobe.aqi.pairwise`: the exact screened pair search behind Dunn's extremes
- :mod:`~geomprobe.aqi.indices`: the indices, their registry (:func:`register_index`), AQI, reports
- :mod:`~geomprobe.aqi.variants`: the paper's CHI/XB variant and reduced activations
- :mod:`~geomprobe.aqi.paper`: the paper's two published scripts, reproduced step by step
- :mod:`~geomprobe.aqi.resampling`: bootstrap intervals and the permutation p-value
- :mod:`~geomprobe.aqi.layers`: one layer's record (:class:`LayerAQI`)
- :mod:`~geomprobe.aqi.pooled`: learned layer weights and the pooled AQI
- :mod:`~geomprobe.aqi.streamed`: caches larger than memory
- :mod:`~geomprobe.aqi.cache`: the cache-level entry points (:func:`aqi_by_layer`, :func:`pooled_aqi`)
"""

from __future__ import annotations

from geomprobe.aqi.cache import aqi_by_layer, cache_metadata, pooled_aqi
from geomprobe.aqi.indices import (
    DEFAULT_GAMMA,
    INDEX_INFO,
    INDEX_NAMES,
    INDICES,
    METRIC_DTYPE,
    ClusterReport,
    DegenerateClustersWarning,
    IndexInfo,
    aqi_from_indices,
    calinski_harabasz,
    cluster_indices,
    cluster_report,
    davies_bouldin,
    dunn_index,
    extra_index_names,
    register_index,
    unregister_index,
    xie_beni,
)
from geomprobe.aqi.layers import LayerAQI, layer_aqi
from geomprobe.aqi.paper import PAPER_VARIANTS, SCRIPT_SETTINGS, PaperAQI, paper_aqi, paper_pool
from geomprobe.aqi.pooled import LayerWeightPooler, PooledAQI, pooled_aqi_arrays
from geomprobe.aqi.resampling import CI_METHODS, Resampling, resample_indices
from geomprobe.aqi.stats import ClusterStats
from geomprobe.aqi.streamed import streamed_cluster_report, streamed_layer_aqi
from geomprobe.aqi.validation import choose_labels
from geomprobe.aqi.variants import REDUCTIONS, VARIANTS, chi_xb_scores, parse_reduction, reduce_activations

__all__ = [
    # indices and AQI
    "INDEX_NAMES",
    "DEFAULT_GAMMA",
    "METRIC_DTYPE",
    "DegenerateClustersWarning",
    "ClusterReport",
    "ClusterStats",
    "cluster_report",
    "cluster_indices",
    "davies_bouldin",
    "calinski_harabasz",
    "xie_beni",
    "dunn_index",
    "aqi_from_indices",
    # the index registry
    "INDICES",
    "INDEX_INFO",
    "IndexInfo",
    "extra_index_names",
    "register_index",
    "unregister_index",
    # paper variants
    "VARIANTS",
    "REDUCTIONS",
    "chi_xb_scores",
    "parse_reduction",
    "reduce_activations",
    # the published scripts, reproduced
    "PAPER_VARIANTS",
    "SCRIPT_SETTINGS",
    "PaperAQI",
    "paper_aqi",
    "paper_pool",
    # uncertainty
    "CI_METHODS",
    "Resampling",
    "resample_indices",
    # layers and caches
    "choose_labels",
    "LayerAQI",
    "layer_aqi",
    "aqi_by_layer",
    "streamed_cluster_report",
    "streamed_layer_aqi",
    "cache_metadata",
    # layer-wise pooled AQI
    "LayerWeightPooler",
    "PooledAQI",
    "pooled_aqi_arrays",
    "pooled_aqi",
]
