"""Probes on cache files: train with an honest held-out split, evaluate, transfer, token scores."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geomprobe.activations.store import CacheFile, open_cache
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.labels import binary_labels
from geomprobe.probes.kinds import probe_kind
from geomprobe.probes.persistence import ProbeSet, check_compatible
from geomprobe.probes.results import (  # noqa: F401  (layer_records: also imported from here)
    ProbeResult,
    TokenScores,
    TransferResult,
    layer_metrics,
    layer_records,
)
from geomprobe.probes.selection import VALIDATION_SIZE, selection_record, validation_auroc
from geomprobe.probes.splits import pair_train_test_split
from geomprobe.probes.sweep import LayerFit, fit_layers

# Where a recall threshold comes from: a control cache, its activations, or a callable making them.
ControlSource = str | Path | CacheFile | Mapping[str, np.ndarray] | Callable[[ProbeSet], Mapping[str, np.ndarray]]


def _open(cache: str | Path | CacheFile) -> tuple[CacheFile, bool]:
    return (cache, False) if isinstance(cache, CacheFile) else (open_cache(cache), True)


def read_layers(cache: CacheFile, hooks: Sequence[str], pooling: str, rows: np.ndarray | None = None) -> np.ndarray:
    """Stack ``(L, N, d)`` float32 activations of ``hooks``, checking for NaN/inf."""
    out = None
    for i, hook in enumerate(hooks):
        X = cache.read(hook, pooling, rows=rows)
        if out is None:
            out = np.empty((len(hooks),) + X.shape, dtype=np.float32)
        if not np.all(np.isfinite(X)):
            bad = int((~np.isfinite(X)).any(1).sum())
            raise GeomprobeError(
                f"{cache.path.name} has NaN/inf activations in {bad} row(s) at {hook}/{pooling}; "
                "recreate the cache (check the model dtype)"
            )
        out[i] = X
    assert out is not None
    return out


def layer_blocks(hooks: Sequence[str], n_rows: int, d: int, budget: int | None = None) -> list[list[str]]:
    """Split ``hooks`` into groups whose ``(L, N, d)`` float32 stack (plus the sweep's working
    copies, about 3x) fits ``budget`` bytes (default: a quarter of free memory), so a cache larger
    than memory is read a few layers at a time. One group when everything fits."""
    from geomprobe.activations.blocks import memory_available

    budget = budget if budget is not None else memory_available() // 4
    per_layer = max(1, 3 * n_rows * d * 4)
    size = max(1, int(budget // per_layer))
    return [list(hooks[i : i + size]) for i in range(0, len(hooks), size)]


def _concat_fits(fits: Sequence[LayerFit]) -> LayerFit:
    if len(fits) == 1:
        return fits[0]

    def cat(name: str):
        parts = [getattr(f, name) for f in fits]
        return None if any(p is None for p in parts) else np.concatenate(parts)

    return LayerFit(
        fits[0].method,
        cat("coef"),
        cat("intercept"),
        cat("mean"),
        cat("scale"),
        dict(fits[0].params),
        cat("n_iter"),
        cat("converged"),
    )


def _binary(
    cache: CacheFile, positive_label: str | None, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, str, list[str]]:
    """(labelled row indices, 0/1 labels, positive name, negative names): the positive class
    (geomprobe.core.labels) against every other labelled row, optionally only within ``rows``;
    the callers check the classes."""
    choice = binary_labels(cache.labels, cache.label_names, positive_label, rest_negative=True, require_both=False)
    if rows is None:
        return choice.rows, choice.y, choice.names[1], list(choice.negatives)
    keep = np.isin(choice.rows, rows)
    return choice.rows[keep], choice.y[keep], choice.names[1], list(choice.negatives)


def train_probes(
    cache: str | Path | CacheFile,
    method: str = "logistic",
    *,
    hooks: str | Sequence[str] | None = None,
    pooling: str = "last",
    positive_label: str | None = None,
    test_size: float = 0.2,
    seed: int = 0,
    control: ControlSource | None = None,
    fpr: float = 0.01,
    device: str = "auto",
    memory_budget: int | None = None,
    **params: Any,
) -> tuple[ProbeSet, ProbeResult]:
    """Train one probe per hook on a pair-respecting training split; report held-out metrics.

    ``method``: any registered probe kind; ``params`` are its parameters (``C``, ``fit_intercept``,
    ``shrinkage``, ... or ``params=`` the kind's params dataclass), checked before the cache is read and
    passed to :func:`fit_layers`; the saved probe records the kind and its params.
    The returned probes were fitted on the training rows only, so their recorded metrics are honest.
    ``control`` sets the recall threshold (see :func:`score_control`; a callable gets the fitted
    probes and returns ``{hook: activations}``, so a model is only run once training succeeded);
    without it the threshold is tuned on the held-out negatives and recorded as ``test-negatives``.
    The layer to report is chosen inside the training rows (:mod:`geomprobe.probes.selection`: a
    validation split of them), never on the held-out rows, and recorded as ``meta["selection"]``.
    """
    kind = probe_kind(method, depth=2)  # an old spelling warns here, once per call
    method = kind.name
    kind.make_params(**params)  # a bad key or value is refused before any data is read
    handle, owned = _open(cache)
    try:
        chosen = handle.hooks_for(hooks)
        if not chosen:
            raise GeomprobeError(f"cache {handle.path.name} has no hooks")
        rows, y, pos_name, neg_names = _binary(handle, positive_label)
        pairs = handle.pair_ids[rows]
        if len(np.unique(y)) < 2:
            raise GeomprobeError(
                f"cache {handle.path.name} has only one class ({pos_name if y.any() else ', '.join(neg_names)}); "
                "a probe needs two"
            )
        train, test = pair_train_test_split(y, pairs, test_size=test_size, seed=seed)
        # A few layers at a time when the cache is larger than memory; layers are independent
        # problems, so the result is the same as one all-layer sweep.
        digest = hashlib.sha256()  # same bytes, same order as data_sha256(all layers, labels)
        fits, score_blocks = [], []
        validation: list[float] | None = []
        n_fit = n_validation = 0
        for block in layer_blocks(chosen, handle.n_prompts, handle.d_model, memory_budget):
            block_X = read_layers(handle, block, pooling)
            for layer_X in block_X:
                digest.update(np.ascontiguousarray(layer_X, dtype=np.float32).tobytes())
            X = block_X[:, rows]
            del block_X
            block_fit = fit_layers(X[:, train], y[train], method, pairs=pairs[train], device=device, **params)
            fits.append(block_fit)
            score_blocks.append(block_fit.decision_function(X[:, test]))
            chosen_by = validation_auroc(X, y, pairs, method, rows=train, seed=seed, device=device, **params)
            if chosen_by is None or validation is None:
                validation = None  # too few training rows to carve a validation split
            else:
                validation += [float(v) for v in chosen_by[0]]
                n_fit, n_validation = chosen_by[1], chosen_by[2]
            del X
        digest.update(np.ascontiguousarray(handle.labels, dtype=np.int64).tobytes())
        full_hash = digest.hexdigest()
        fit = _concat_fits(fits)
        scores = np.concatenate(score_blocks)
        control_scores = None
        # the cache's model source rides along from the start: a lazy control set loads that model
        probes = ProbeSet(
            chosen,
            fit,
            pooling,
            pos_name,
            list(handle.label_names),
            handle.model_id,
            str(handle.attrs.get("model_revision", "")),
            {"model_source": str(handle.attrs.get("model_source", ""))},
        )
        if control is not None:
            control_scores = score_control(probes, control)
        metrics = layer_metrics(
            chosen,
            scores,
            y[test],
            pooling=pooling,
            method=method,
            control=None if control_scores is None else np.stack([control_scores[h] for h in chosen]),
            fpr=fpr,
        )
        probes.meta.update(
            {
                "negative_labels": neg_names,
                "model_source": str(handle.attrs.get("model_source", "")),
                "train_cache": handle.path.name,
                "data_sha256": full_hash,
                "split": {
                    "test_size": test_size,
                    "seed": seed,
                    "n_train": int(len(train)),
                    "n_test": int(len(test)),
                    "test_rows": [int(v) for v in rows[test]],
                    "respects_pairs": True,
                },
                "metrics": [m.to_dict() for m in metrics],
                "selection": selection_record(
                    chosen,
                    validation,
                    n_fit=n_fit,
                    n_validation=n_validation,
                    val_size=VALIDATION_SIZE,
                    reason="too few training rows for a validation split",
                ),
            }
        )
        result = ProbeResult(
            metrics,
            dict(zip(chosen, scores)),
            y[test],
            control_scores,
            {"cache": str(handle.path), "eval_rows": "held-out"},
            rows[test],
        )
        return probes, result
    finally:
        if owned:
            handle.close()


def score_control(probes: ProbeSet, control: ControlSource) -> dict[str, np.ndarray]:
    """Probe scores on a control set: a cache file (all rows), ``{hook: (M, d) activations}``, or a
    callable that returns those activations for ``probes`` (run lazily, e.g. a model over prompts)."""
    if callable(control) and not isinstance(control, (str, Path, CacheFile, Mapping)):
        control = control(probes)
    if isinstance(control, Mapping):
        return {h: probes.decision_function(h, np.asarray(control[h])) for h in probes.hooks}
    if not isinstance(control, CacheFile) and not Path(control).exists():
        raise GeomprobeError(
            f"control cache {str(control)!r} does not exist; "
            "build it with geomprobe cache --dataset control or pass another --control"
        )
    handle, owned = _open(control)
    try:
        check_compatible(
            probes,
            d_model=handle.d_model,
            hooks=handle.hooks,
            allow_model_mismatch=True,
            where=f"control cache {handle.path.name}",
        )
        missing = [h for h in probes.hooks if h not in handle.hooks]
        if missing:
            raise GeomprobeError(f"control cache {handle.path.name} lacks hook {missing[0]}; cache the same hooks as the probe")
        if handle.n_prompts == 0:
            raise GeomprobeError(f"control cache {handle.path.name} is empty; pass a control cache with rows")
        return {h: probes.decision_function(h, read_layers(handle, [h], probes.pooling)[0]) for h in probes.hooks}
    finally:
        if owned:
            handle.close()


def evaluate_probes(
    probes: ProbeSet,
    cache: str | Path | CacheFile,
    *,
    hooks: Sequence[str] | None = None,
    positive_label: str | None = None,
    control: ControlSource | None = None,
    fpr: float = 0.01,
    allow_model_mismatch: bool = False,
    all_rows: bool = False,
) -> ProbeResult:
    """Per-layer metrics of saved probes on a cache.

    If the cache is the probe's own training data (same activations and labels, by hash), only
    the held-out rows are scored unless ``all_rows``. Without ``control`` the recall threshold is
    tuned on the evaluated negatives (``threshold_source: "test-negatives"``).
    """
    handle, owned = _open(cache)
    try:
        chosen = list(hooks) if hooks else list(probes.hooks)
        missing = [h for h in chosen if h not in handle.hooks]
        if missing:
            raise GeomprobeError(
                f"cache {handle.path.name} lacks hook {missing[0]} that the probe uses; cache it or pass --hooks"
            )
        mismatch = check_compatible(
            probes,
            model_id=handle.model_id,
            d_model=handle.d_model,
            hooks=handle.hooks,
            allow_model_mismatch=allow_model_mismatch,
            where=f"cache {handle.path.name}",
        )
        pos = (
            positive_label
            if positive_label is not None
            else (probes.positive_label if probes.positive_label in handle.label_names else None)
        )
        rows, y, pos_name, neg_names = _binary(handle, pos)
        if not y.any():
            raise GeomprobeError(f"cache {handle.path.name} has no rows labelled {pos_name!r}; pass --positive-label")
        eval_rows = "all"
        split = probes.meta.get("split") or {}
        if not all_rows and probes.meta.get("data_sha256") and chosen == list(probes.hooks):
            # Is this the probe's own training cache? Hash layer by layer (never all layers at once).
            digest = hashlib.sha256()
            for h in chosen:
                digest.update(np.ascontiguousarray(read_layers(handle, [h], probes.pooling)[0]).tobytes())
            digest.update(np.ascontiguousarray(handle.labels, dtype=np.int64).tobytes())
            if digest.hexdigest() == probes.meta["data_sha256"]:
                held = np.asarray(split.get("test_rows", []), dtype=np.int64)
                keep = np.isin(rows, held)
                rows, y = rows[keep], y[keep]
                eval_rows = "held-out"
        scores = np.stack([probes.decision_function(h, read_layers(handle, [h], probes.pooling, rows=rows)[0]) for h in chosen])
        control_scores = score_control(probes, control) if control is not None else None
        metrics = layer_metrics(
            chosen,
            scores,
            y,
            pooling=probes.pooling,
            method=probes.method,
            control=None if control_scores is None else np.stack([control_scores[h] for h in chosen]),
            fpr=fpr,
        )
        for m in metrics:
            m.eval_rows = eval_rows
        info = {
            "cache": str(handle.path),
            "eval_model_id": handle.model_id,
            "probe_model_id": probes.model_id,
            "model_mismatch": mismatch,
            "eval_rows": eval_rows,
            "positive_label": pos_name,
            "negative_labels": neg_names,
        }
        return ProbeResult(metrics, dict(zip(chosen, scores)), y, control_scores, info, rows)
    finally:
        if owned:
            handle.close()


def transfer_matrix(
    caches: Sequence[str | Path],
    method: str = "logistic",
    *,
    hooks: str | Sequence[str] | None = None,
    pooling: str = "last",
    test_size: float = 0.2,
    seed: int = 0,
    fpr: float = 0.01,
    allow_model_mismatch: bool = True,
    **params: Any,
) -> TransferResult:
    """Train on each cache, evaluate on every cache (own held-out split on the diagonal)."""
    if len(caches) < 2:
        raise GeomprobeError("a transfer matrix needs at least two caches")
    method = probe_kind(method, depth=2).name  # its params are checked by train_probes, before any fit
    names = [Path(c).name for c in caches]
    trained, model_ids = [], []
    common: list[str] | None = None
    for c in caches:
        with open_cache(c) as handle:
            chosen = handle.hooks_for(hooks)
            common = chosen if common is None else [h for h in common if h in chosen]
            model_ids.append(handle.model_id)
    if not common:
        raise GeomprobeError("the caches share no hook; cache the same hooks in each")
    for c in caches:
        trained.append(
            train_probes(c, method, hooks=common, pooling=pooling, test_size=test_size, seed=seed, fpr=fpr, **params)[0]
        )
    n, L = len(caches), len(common)
    auc, rec = np.full((n, n, L), np.nan), np.full((n, n, L), np.nan)
    for i, probes in enumerate(trained):
        for j, c in enumerate(caches):
            res = evaluate_probes(probes, c, fpr=fpr, allow_model_mismatch=allow_model_mismatch)
            auc[i, j] = [r["auroc"] for r in res.records]
            rec[i, j] = [r["recall_at_fpr"] for r in res.records]
    return TransferResult(names, common, auc, rec, model_ids)


def token_scores(
    probes: ProbeSet,
    cache: str | Path | CacheFile,
    hook: str,
    rows: Sequence[int] | None = None,
    allow_model_mismatch: bool = False,
) -> list[TokenScores]:
    """Score every token of ``rows`` (default: all) from an ``all``-pooled cache."""
    handle, owned = _open(cache)
    try:
        check_compatible(
            probes,
            model_id=handle.model_id,
            d_model=handle.d_model,
            hooks=handle.hooks,
            allow_model_mismatch=allow_model_mismatch,
            where=f"cache {handle.path.name}",
        )
        if "all" not in handle.poolings:
            raise GeomprobeError(f"cache {handle.path.name} has no per-token ('all') activations; re-cache with --pooling all")
        offsets, ids, starts, ends = handle.token_offsets, handle.token_ids, handle.response_start, handle.response_end
        labels, names = handle.labels, handle.label_names
        chosen = range(handle.n_prompts) if rows is None else rows
        out = []
        for row in chosen:
            if not 0 <= int(row) < handle.n_prompts:
                raise GeomprobeError(f"row {row} is out of range; the cache has {handle.n_prompts} prompts")
            lo, hi = int(offsets[row]), int(offsets[row + 1])
            X = handle.read(hook, "all", rows=slice(lo, hi))
            s = probes.decision_function(hook, X) if hi > lo else np.zeros(0)
            label = names[labels[row]] if labels[row] >= 0 else ""
            out.append(TokenScores(int(row), ids[lo:hi].copy(), s, int(starts[row]), label, int(ends[row])))
        return out
    finally:
        if owned:
            handle.close()


def response_scores(probes: ProbeSet, cache: str | Path | CacheFile, hook: str, **kwargs: Any) -> np.ndarray:
    """Mean token score over each prompt's response tokens (the reference's response score)."""
    return np.array([t.response_mean for t in token_scores(probes, cache, hook, **kwargs)])
