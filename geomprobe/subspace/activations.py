"""Safety-subspace overlap in activation space: two classes of prompts, one basis each, per layer.

For every hook, the pooled activations of class A and class B (e.g. harmful vs harmless) each
get an orthonormal basis (centred by default). The record holds the mode subspace overlap, the
principal cosines, the analytic and an empirical random baseline, and how much of the
class-mean difference direction each basis holds (random baseline ``k / d``).

Differences from the reference analysis: activations are centred per class unless
``center=False`` (uncentred bases put the shared mean first and inflate the overlap), and the
cache's ``last`` pooling is the last real token of each prompt, never padding.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geomprobe.activations.store import CacheFile, open_cache
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.labels import binary_labels
from geomprobe.subspace.basis import (
    check_energy,
    check_k,
    empirical_random_baseline,
    energy_in_subspace,
    mode_subspace_overlap,
    principal_cosines,
    random_baseline,
    subspace_basis,
)


@dataclass
class LayerOverlap:
    """Overlap of the two class subspaces at one hook."""

    hook: str
    layer: int
    pooling: str
    label_a: str
    label_b: str
    n_a: int
    n_b: int
    d: int
    centered: bool
    energy_target: float | None
    k_requested: int | None
    k_a: int
    k_b: int
    energy_a: float  # fraction of class A's (centred) sum of squares its basis holds
    energy_b: float
    mso: float
    cosines: np.ndarray = field(repr=False)
    baseline: float  # analytic max(k_a, k_b) / d
    baseline_empirical: float  # mean MSO of random subspace pairs of the same sizes
    baseline_empirical_std: float
    baseline_empirical_p95: float
    n_draws: int
    seed: int
    mean_diff_norm: float  # ||mean_a - mean_b||
    mean_diff_in_a: float  # squared cosine of the mean difference with span(Q_a)
    mean_diff_in_b: float
    mean_diff_baseline_a: float  # k_a / d
    mean_diff_baseline_b: float
    svd_method: str
    stored_dtype: str
    dtype: str = "float64"
    model_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["cosines"] = [float(c) for c in np.asarray(self.cosines)]
        return record

    to_record = to_dict  # the name the plots and CLI used first


def _resolve_classes(
    labels: np.ndarray, names: Sequence[str], positive_label: str | None, pair: Sequence[str] | None
) -> tuple[str, str, np.ndarray, np.ndarray]:
    """Row indices of class A (the reference) and class B (the positive class), with their names."""
    if pair is not None and positive_label is not None:
        raise GeomprobeError("give either label_pair=(a, b) (--labels A B) or positive_label (--positive-label), not both")
    choice = binary_labels(labels, names, positive_label, pair)
    return choice.names[0], choice.names[1], choice.rows[choice.y == 0], choice.rows[choice.y == 1]


def overlap_of_arrays(
    Xa: np.ndarray,
    Xb: np.ndarray,
    *,
    hook: str = "",
    layer: int = -1,
    pooling: str = "last",
    label_a: str = "a",
    label_b: str = "b",
    energy: float | None = 0.9,
    k: int | None = None,
    center: bool = True,
    n_draws: int = 100,
    seed: int = 0,
    device: Any = "cpu",
    method: str = "auto",
    stored_dtype: str = "float32",
    model_id: str = "",
) -> LayerOverlap:
    """The :class:`LayerOverlap` of two in-memory activation matrices (rows are samples)."""
    Xa = np.asarray(Xa)
    Xb = np.asarray(Xb)
    if Xa.ndim != 2 or Xb.ndim != 2 or Xa.shape[1] != Xb.shape[1]:
        raise GeomprobeError(f"class arrays must be (n, d) with the same d; got {Xa.shape} and {Xb.shape}")
    where = f" at {hook}" if hook else ""
    ba = subspace_basis(Xa, energy, k, center, method=method, device=device, name=f"class {label_a!r}{where}")
    bb = subspace_basis(Xb, energy, k, center, method=method, device=device, name=f"class {label_b!r}{where}")
    diff = Xa.astype(np.float64).mean(0) - Xb.astype(np.float64).mean(0)
    return _overlap_record(
        ba,
        bb,
        diff,
        hook=hook,
        layer=layer,
        pooling=pooling,
        label_a=label_a,
        label_b=label_b,
        center=center,
        n_draws=n_draws,
        seed=seed,
        device=device,
        stored_dtype=stored_dtype,
        model_id=model_id,
    )


def _overlap_record(
    ba,
    bb,
    diff: np.ndarray,
    *,
    hook: str,
    layer: int,
    pooling: str,
    label_a: str,
    label_b: str,
    center: bool,
    n_draws: int,
    seed: int,
    device: Any,
    stored_dtype: str,
    model_id: str,
) -> LayerOverlap:
    d = ba.d
    empirical = empirical_random_baseline(d, ba.k, bb.k, n_draws=n_draws, seed=seed, device=device)
    return LayerOverlap(
        hook=hook,
        layer=layer,
        pooling=pooling,
        label_a=label_a,
        label_b=label_b,
        n_a=int(ba.n_samples),
        n_b=int(bb.n_samples),
        d=int(d),
        centered=bool(center),
        energy_target=ba.energy_target,
        k_requested=ba.k_requested,
        k_a=ba.k,
        k_b=bb.k,
        energy_a=ba.energy,
        energy_b=bb.energy,
        mso=mode_subspace_overlap(ba, bb),
        cosines=principal_cosines(ba, bb),
        baseline=random_baseline(d, ba.k, bb.k),
        baseline_empirical=empirical.mean,
        baseline_empirical_std=empirical.std,
        baseline_empirical_p95=empirical.p95,
        n_draws=int(n_draws),
        seed=int(seed),
        mean_diff_norm=float(np.linalg.norm(diff)),
        mean_diff_in_a=energy_in_subspace(ba, diff),
        mean_diff_in_b=energy_in_subspace(bb, diff),
        mean_diff_baseline_a=ba.k / d,
        mean_diff_baseline_b=bb.k / d,
        svd_method=ba.method if ba.method == bb.method else f"{ba.method}/{bb.method}",
        stored_dtype=stored_dtype,
        model_id=model_id,
    )


def activation_overlap_by_layer(
    cache_or_path: CacheFile | str | Path,
    hooks: str | Sequence[str] | None = None,
    pooling: str = "last",
    positive_label: str | None = None,
    label_pair: Sequence[str] | None = None,
    *,
    energy: float | None = 0.9,
    k: int | None = None,
    center: bool = True,
    n_draws: int = 100,
    seed: int = 0,
    device: Any = "auto",
    method: str = "auto",
    stream: bool | None = None,
    labels: Sequence[str] | None = None,
) -> list[LayerOverlap]:
    """Per-hook overlap of the two class subspaces stored in an activation cache.

    ``stream=True`` never loads a layer: each class basis comes from its d x d scatter matrix,
    accumulated over row blocks (see :mod:`geomprobe.activations.blocks`); ``None`` streams only when a
    layer would not fit comfortably in the memory available.

    ``label_pair=(a, b)`` picks two classes (``a`` is the reference, ``b`` the positive class);
    ``positive_label`` takes one class against every other labelled row; with neither, the cache
    must hold exactly two labelled classes. Unlabelled rows (-1) are dropped. ``hooks`` takes
    CLI-style specs (default: every stored hook). The arguments come in the order every stage
    uses: cache, hooks, pooling, positive_label, label_pair. ``labels=`` is the old name of
    ``label_pair`` (deprecated).
    """
    if labels is not None:
        if label_pair is not None:
            raise GeomprobeError("give label_pair=(a, b) only; labels= is its old name")
        warnings.warn("activation_overlap_by_layer(labels=...) is now label_pair=...", DeprecationWarning, stacklevel=2)
        label_pair = labels
    from geomprobe.core.device import resolve_device

    if k is not None:
        check_k(k)
    else:
        check_energy(energy)
    dev = resolve_device(device)
    own = not isinstance(cache_or_path, CacheFile)
    cache = cache_or_path if isinstance(cache_or_path, CacheFile) else open_cache(cache_or_path)
    try:
        chosen = cache.hooks_for(hooks)
        if pooling not in cache.poolings or pooling == "all":
            raise GeomprobeError(
                f"cache {cache.path.name} has no usable {pooling!r} pooling (it has {', '.join(cache.poolings)}); "
                "use last or mean"
            )
        label_a, label_b, rows_a, rows_b = _resolve_classes(
            cache.labels, cache.label_names, positive_label, tuple(label_pair) if label_pair is not None else None
        )
        for name, rows in ((label_a, rows_a), (label_b, rows_b)):
            if len(rows) == 0:
                raise GeomprobeError(f"class {name!r} has no rows in {cache.path.name}; pick labels that are present")
        stored = str(cache.attrs.get("store_dtype", "float32"))
        results = []
        from geomprobe.activations.blocks import needs_streaming
        from geomprobe.subspace.streamed import streamed_class_basis

        if stream is None:
            stream = needs_streaming(cache.n_prompts, cache.d_model)
        for hook in chosen:
            try:
                layer = cache.layer(hook)
            except GeomprobeError:
                layer = -1
            if stream:
                ba, bb = (
                    streamed_class_basis(cache, hook, pooling, rows, energy, k, center, name=f"class {name!r} at {hook}")
                    for name, rows in ((label_a, rows_a), (label_b, rows_b))
                )
                diff = _mean(ba, cache, hook, pooling, rows_a) - _mean(bb, cache, hook, pooling, rows_b)
                results.append(
                    _overlap_record(
                        ba,
                        bb,
                        diff,
                        hook=hook,
                        layer=layer,
                        pooling=pooling,
                        label_a=label_a,
                        label_b=label_b,
                        center=center,
                        n_draws=n_draws,
                        seed=seed,
                        device=dev,
                        stored_dtype=stored,
                        model_id=cache.model_id,
                    )
                )
                continue
            X = cache.read(hook, pooling)
            results.append(
                overlap_of_arrays(
                    X[rows_a],
                    X[rows_b],
                    hook=hook,
                    layer=layer,
                    pooling=pooling,
                    label_a=label_a,
                    label_b=label_b,
                    energy=energy,
                    k=k,
                    center=center,
                    n_draws=n_draws,
                    seed=seed,
                    device=dev,
                    method=method,
                    stored_dtype=stored,
                    model_id=cache.model_id,
                )
            )
        return results
    finally:
        if own:
            cache.close()


def _mean(basis, cache: CacheFile, hook: str, pooling: str, rows: np.ndarray) -> np.ndarray:
    if basis.mean is not None:
        return basis.mean
    from geomprobe.activations.blocks import block_rows_for, iter_row_blocks

    total = np.zeros(cache.d_model)
    for _, X in iter_row_blocks(cache, hook, pooling, np.sort(rows), block_rows_for(cache.d_model)):
        total += X.astype(np.float64).sum(0)
    return total / len(rows)
