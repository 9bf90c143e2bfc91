"""One layer's AQI record: the indices with their intervals and p-value, and the layer it came from."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from geomprobe.aqi.indices import DEFAULT_GAMMA, INDEX_NAMES, METRIC_DTYPE, ClusterReport, cluster_report, extra_index_names
from geomprobe.aqi.resampling import Resampling, check_resampling_settings, resample_indices
from geomprobe.aqi.validation import as_matrix
from geomprobe.aqi.variants import parse_reduction, reduce_activations
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.hooks import hook_layer


@dataclass
class LayerAQI:
    """One layer's indices, AQI, bootstrap intervals and permutation p-value (one output record).

    ``extra``: the value of every index registered with :func:`geomprobe.aqi.register_index` beyond
    the paper's four; ``ci`` holds an interval for each of them as for the four.
    """

    hook: str
    layer: int
    pooling: str
    n: int
    n_per_class: dict[str, int]
    davies_bouldin: float
    dunn: float
    xie_beni: float
    calinski_harabasz: float
    aqi: float
    gamma: float
    aqi_ci_low: float
    aqi_ci_high: float
    ci: dict[str, tuple[float, float]]
    ci_level: float
    ci_method: str
    aqi_bootstrap_mean: float
    p_value: float | None
    n_bootstrap: int
    n_permutations: int
    resample_n: int
    subsampled: bool
    subsample_aqi: float
    min_between: float
    max_diameter: float
    reduction: str
    dtype: str = METRIC_DTYPE
    seed: int = 0
    variants: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["ci"] = {k: list(v) for k, v in self.ci.items()}
        # JSON has no inf: keep it readable as a string next to the null that write_json emits
        for name in INDEX_NAMES:
            value = record[name]
            if isinstance(value, float) and math.isinf(value):
                record[f"{name}_is"] = "inf" if value > 0 else "-inf"
        infinite = {k: ("inf" if v > 0 else "-inf") for k, v in self.extra.items() if math.isinf(v)}
        if infinite:
            record["extra_is"] = infinite
        return record

    to_record = to_dict  # the name the CLI and plots have used


def layer_aqi(
    X: Any,
    y: Any,
    *,
    hook: str = "",
    layer: int = -1,
    pooling: str = "",
    class_names: Sequence[str] | None = None,
    gamma: float = DEFAULT_GAMMA,
    n_bootstrap: int = 200,
    n_permutations: int = 200,
    max_points: int = 1000,
    ci_level: float = 0.95,
    ci_method: str = "basic",
    reduce: str | None = None,
    seed: int = 0,
    device: str | torch.device | None = "auto",
) -> LayerAQI:
    """Exact indices + AQI of one layer's activations, with bootstrap intervals and a permutation p-value."""
    resampled = bool(n_bootstrap or n_permutations)
    if resampled:  # before the exact indices, which can take long
        check_resampling_settings(n_bootstrap, n_permutations, ci_level, ci_method, max_points)
    X = as_matrix(X, keep_float=True)
    method, dims = parse_reduction(reduce)
    if method != "none":
        X = reduce_activations(X, reduce, seed)
    report = cluster_report(X, y, gamma=gamma, device=device)
    res = (
        resample_indices(
            X,
            y,
            n_bootstrap=n_bootstrap,
            n_permutations=n_permutations,
            ci_level=ci_level,
            max_points=max_points,
            gamma=gamma,
            ci_method=ci_method,
            seed=seed,
        )
        if resampled
        else None
    )
    return layer_result(
        report,
        res,
        hook=hook,
        layer=layer,
        pooling=pooling,
        class_names=class_names,
        gamma=gamma,
        n_bootstrap=n_bootstrap,
        n_permutations=n_permutations,
        ci_level=ci_level,
        ci_method=ci_method,
        reduction=method if method == "none" else f"{method}:{dims}",
        seed=seed,
    )


def layer_result(
    report: ClusterReport,
    res: Resampling | None,
    *,
    hook: str,
    layer: int,
    pooling: str,
    class_names: Sequence[str] | None,
    gamma: float,
    n_bootstrap: int,
    n_permutations: int,
    ci_level: float,
    ci_method: str,
    reduction: str,
    seed: int,
) -> LayerAQI:
    """The record of one layer from its report and resampling (shared by the in-memory and streamed paths)."""
    names = list(class_names) if class_names is not None else [str(c) for c in report.classes]
    nan2 = (math.nan, math.nan)
    ci = res.ci if res else {name: nan2 for name in (*INDEX_NAMES, "aqi", *extra_index_names())}
    return LayerAQI(
        hook=hook,
        layer=layer,
        pooling=pooling,
        n=report.n,
        n_per_class={names[i]: c for i, c in enumerate(report.counts)},
        davies_bouldin=report.davies_bouldin,
        dunn=report.dunn,
        xie_beni=report.xie_beni,
        calinski_harabasz=report.calinski_harabasz,
        aqi=report.aqi,
        gamma=gamma,
        aqi_ci_low=ci["aqi"][0],
        aqi_ci_high=ci["aqi"][1],
        ci=ci,
        ci_level=ci_level,
        ci_method=ci_method,
        aqi_bootstrap_mean=res.bootstrap_mean["aqi"] if res else math.nan,
        p_value=res.p_value if res else None,
        n_bootstrap=n_bootstrap,
        n_permutations=n_permutations,
        resample_n=res.resample_n if res else 0,
        subsampled=res.subsampled if res else False,
        subsample_aqi=res.subsample_aqi if res else math.nan,
        min_between=report.min_between,
        max_diameter=report.max_diameter,
        reduction=reduction,
        seed=seed,
        notes=report.notes,
        extra=dict(report.extra),
    )


def layer_index(hook: str) -> int:
    """The block index in a hook name, or -1 for hooks outside the blocks (e.g. ``ln_final``)."""
    try:
        return hook_layer(hook)
    except GeomprobeError:
        return -1
