"""AQI of a cache file: per layer (:func:`aqi_by_layer`), pooled over layers (:func:`pooled_aqi`), provenance.

Each takes a cache path or an open :class:`~geomprobe.activations.store.CacheFile`, then hooks,
pooling and the label choice, in that order. Layers too large for memory go through
:mod:`geomprobe.aqi.streamed`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from geomprobe.activations.blocks import needs_streaming
from geomprobe.activations.store import CacheFile, open_cache
from geomprobe.aqi.indices import DEFAULT_GAMMA
from geomprobe.aqi.layers import LayerAQI, layer_aqi, layer_index
from geomprobe.aqi.pooled import PooledAQI, pooled_aqi_arrays
from geomprobe.aqi.streamed import streamed_layer_aqi
from geomprobe.aqi.validation import choose_labels
from geomprobe.aqi.variants import VARIANTS, chi_xb_scores
from geomprobe.core.errors import GeomprobeError


@contextmanager
def _opened(cache_or_path: Any) -> Iterator[CacheFile]:
    """An open cache; closed afterwards only if opened here."""
    if isinstance(cache_or_path, CacheFile):
        yield cache_or_path
        return
    cache = open_cache(cache_or_path)
    try:
        yield cache
    finally:
        cache.close()


def aqi_by_layer(
    cache_or_path: Any,
    hooks: str | Sequence[str] | None = None,
    pooling: str = "last",
    positive_label: str | None = None,
    label_pair: Sequence[str] | None = None,
    *,
    gamma: float = DEFAULT_GAMMA,
    n_bootstrap: int = 200,
    n_permutations: int = 200,
    max_points: int = 1000,
    ci_level: float = 0.95,
    ci_method: str = "basic",
    reduce: str | None = None,
    variants: Sequence[str] = (),
    seed: int = 0,
    device: str | torch.device | None = "auto",
    progress: bool = False,
    stream: bool | None = None,
) -> list[LayerAQI]:
    """AQI with intervals and p-value for each selected hook of a cache file (or open CacheFile).

    ``stream=True`` reads the cache in blocks (exact indices, equal to the in-memory result up to
    float64 summation order; see :mod:`geomprobe.activations.blocks`); ``None`` streams only when one
    layer's rows would not fit comfortably in the memory available.

    ``variants`` may add ``"chi-xb"`` (the paper's 0-100 variant, relative to these layers) to each
    record's ``variants``. Each layer uses the same seed, so its results do not depend on which
    other hooks were selected.
    """
    for v in variants:
        if v not in VARIANTS:
            raise GeomprobeError(f"unknown AQI variant {v!r}; use {', '.join(VARIANTS)}")
    with _opened(cache_or_path) as cache:
        chosen = cache.hooks_for(hooks)
        choice = choose_labels(cache.labels, cache.label_names, positive_label, label_pair)
        results = []
        iterator = chosen
        if progress:
            from tqdm import tqdm

            iterator = tqdm(chosen, desc="aqi", unit="layer", leave=False)
        if stream is None:
            stream = needs_streaming(len(choice.rows), cache.d_model)
        if stream and reduce:
            raise GeomprobeError("--reduce needs the whole layer in memory; drop it to stream a large cache")
        resampling: dict[str, Any] = dict(
            gamma=gamma,
            n_bootstrap=n_bootstrap,
            n_permutations=n_permutations,
            max_points=max_points,
            ci_level=ci_level,
            ci_method=ci_method,
            seed=seed,
            device=device,
        )
        for hook in iterator:
            X = None if stream else cache.read(hook, pooling, rows=choice.rows)
            try:
                if X is None:
                    result = streamed_layer_aqi(
                        cache, hook, pooling, choice.rows, choice.y, class_names=choice.names, **resampling
                    )
                else:
                    result = layer_aqi(
                        X,
                        choice.y,
                        hook=hook,
                        layer=layer_index(hook),
                        pooling=pooling,
                        class_names=choice.names,
                        reduce=reduce,
                        **resampling,
                    )
            except GeomprobeError as exc:
                raise GeomprobeError(f"{hook}/{pooling}: {exc}") from None
            results.append(result)
    if "chi-xb" in variants:
        scores = chi_xb_scores([r.calinski_harabasz for r in results], [r.xie_beni for r in results], gamma)
        for r, s in zip(results, scores):
            r.variants["chi-xb"] = float(s)
    return results


def pooled_aqi(
    cache_or_path: Any,
    hooks: str | Sequence[str] | None = None,
    pooling: str = "last",
    positive_label: str | None = None,
    label_pair: Sequence[str] | None = None,
    *,
    train_fraction: float = 0.5,
    sparsity: float = 0.1,
    gamma: float = DEFAULT_GAMMA,
    seed: int = 0,
    device: str | torch.device | None = "auto",
) -> PooledAQI:
    """The paper's layer-wise pooled AQI over a cache's hooks (same label choice as :func:`aqi_by_layer`)."""
    with _opened(cache_or_path) as cache:
        chosen = cache.hooks_for(hooks)
        choice = choose_labels(cache.labels, cache.label_names, positive_label, label_pair)
        layers = {hook: cache.read(hook, pooling, rows=choice.rows) for hook in chosen}
    return pooled_aqi_arrays(
        layers,
        choice.y,
        pooling=pooling,
        train_fraction=train_fraction,
        sparsity=sparsity,
        gamma=gamma,
        seed=seed,
        device=device,
    )


def cache_metadata(cache_or_path: Any) -> dict[str, Any]:
    """Provenance for output records: model id, revision and the cache's storage dtype."""
    with _opened(cache_or_path) as cache:
        attrs = cache.attrs
        return {
            "cache": str(Path(cache.path)),
            "model_id": cache.model_id,
            "model_revision": str(attrs.get("model_revision", "")),
            "model_dtype": str(attrs.get("model_dtype", "")),
            "store_dtype": str(attrs.get("store_dtype", "float32")),
            "label_names": list(cache.label_names),
        }
