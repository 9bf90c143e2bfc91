"""A toy cluster index, registered once: the closest pair of centroids over the largest mean distance to a centroid.

Importing this module registers it (``geomprobe --plugin tests/toy_index.py aqi ...`` does the same for
the CLI); docs/architecture.md shows this file as the worked example of "Adding a cluster index".
"""

from geomprobe.aqi import ClusterStats, register_index


@register_index("gap_to_spread", label="centroid gap / spread", better="higher")
def gap_to_spread(stats: ClusterStats) -> float:
    """Closest pair of centroids over the largest mean distance of a cluster's points to its centroid."""
    return float(stats.centroid_distances[stats.off_diagonal].min() / stats.mean_dist.max())
