"""``run_audit``: cache the bundled contrast sets, run every stage per layer, write the report.

Stages, each timed and reported through ``progress``:

1. load the model (and the ``against`` checkpoint, which must share the architecture);
2. cache ``harmful-harmless``, ``honesty`` and ``control`` (``last`` and ``mean`` pooling) at the
   audited layers' ``resid_post`` into ``out_dir/caches/`` (``caches/against/`` for the second);
3. AQI with bootstrap interval and permutation p-value (harmful vs harmless, ``last`` pooling);
4. activation-subspace overlap of the two classes (``last`` pooling, centred, energy basis);
5. honesty probes of several types (``mean`` pooling over the assistant statement), held-out
   AUROC and recall at 1% FPR on the control set;
6. steering: the harmful - harmless mean difference at the best AQI layer (outside the last
   20% of layers), dose-response of refusal log-odds and KL on held-out prompts, and ablation;
7. with ``against``: the same on the second checkpoint, per-layer deltas, transfer of the first
   checkpoint's probes and directions, and the weight-space update;
8. ``metrics.json``, PNG plots, ``report.html`` and ``report.md``.
"""

from __future__ import annotations

import datetime as _dt
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geomprobe.core.errors import GeomprobeError
from geomprobe.audit.conditions import ConditionResult, FailCondition, evaluate_conditions, parse_conditions
from geomprobe.audit.schema import SCHEMA_NAME, SCHEMA_VERSION

HOOK_KIND = "resid_post"
DATASETS = (("harmful_harmless", "harmful-harmless"), ("honesty", "honesty"), ("control", "control"))
RESIDUAL_WRITERS = ("o_proj", "down_proj", "out_proj", "c_proj", "attn.c_proj", "mlp.c_proj", "fc2", "dense_4h_to_h", "wo", "w2")

ProgressFn = Callable[[str, str], None]


@dataclass(frozen=True)
class AuditSizes:
    """How much work each stage does. :data:`FULL` is the default, :data:`QUICK` is ``--quick``."""

    limit_harmful_harmless: int | None = None  # None: every row of the bundled set
    limit_honesty: int | None = None
    limit_control: int | None = None
    layer_stride: int = 1  # audit every n-th layer (the last layer is always included)
    n_bootstrap: int = 100
    n_permutations: int = 100
    max_points: int = 1000
    subspace_energy: float = 0.9
    n_draws: int = 100
    probe_methods: tuple[str, ...] = ("logistic", "mean-diff", "lda", "pca-diff")
    probe_fpr: float = 0.01
    probe_test_size: float = 0.25
    steering_prompts: int = 16  # per class, held out from the vector
    # A mean-diff vector at multiplier 1 adds one whole class-mean difference.
    multipliers: tuple[float, ...] = (-2.0, -1.0, -0.5, 0.5, 1.0, 2.0)
    kl_limit: float = 0.1
    max_layer_fraction: float = 0.8
    pca_panels: int = 8
    token_prompts: int = 4


FULL = AuditSizes()
QUICK = AuditSizes(
    limit_harmful_harmless=48, limit_honesty=48, limit_control=48, layer_stride=3, n_bootstrap=50, n_permutations=50,
    n_draws=20, probe_methods=("logistic", "mean-diff", "pca-diff"), steering_prompts=8,
    multipliers=(-2.0, -1.0, 1.0, 2.0), pca_panels=4, token_prompts=2,
)


@dataclass
class AuditResult:
    """What an audit wrote: the metrics (as in metrics.json) and the paths of every output."""

    metrics: dict[str, Any]
    out_dir: Path
    metrics_path: Path
    html_path: Path
    markdown_path: Path
    figures: dict[str, Path] = field(default_factory=dict)
    caches: dict[str, Path] = field(default_factory=dict)
    gates: list[ConditionResult] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """True when any ``fail_if`` condition held."""
        return any(g.failed for g in self.gates)


# -- small helpers ----------------------------------------------------------------------------
def _progress_printer(stream=None) -> ProgressFn:
    stream = stream or sys.stderr

    def show(stage: str, message: str) -> None:
        print(f"[audit] {stage:<10} {message}", file=stream, flush=True)

    return show


def _resolve_progress(progress: ProgressFn | bool | None) -> ProgressFn:
    if progress is True:
        return _progress_printer()
    if callable(progress):
        return progress
    return lambda stage, message: None


class _Clock:
    def __init__(self, progress: ProgressFn) -> None:
        self.progress = progress
        self.timings: dict[str, float] = {}

    def run(self, stage: str, message: str, fn: Callable[[], Any]) -> Any:
        self.progress(stage, message + " ...")
        start = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - start
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds
        self.progress(stage, f"done in {seconds:.1f} s")
        return value


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def audited_layers(n_layers: int, stride: int = 1, layers: Sequence[int] | None = None) -> list[int]:
    """Layers to audit: ``layers`` if given, else every ``stride``-th layer plus the last one."""
    if layers is not None:
        chosen = sorted({int(v) if int(v) >= 0 else n_layers + int(v) for v in layers})
        bad = [v for v in chosen if not 0 <= v < n_layers]
        if bad or not chosen:
            raise GeomprobeError(f"layers must be in 0..{n_layers - 1}; got {list(layers)}")
        return chosen
    if stride < 1:
        raise GeomprobeError(f"layer stride must be at least 1, got {stride}")
    return sorted(set(range(0, n_layers, stride)) | {n_layers - 1})


def _hook(layer: int) -> str:
    from geomprobe.core.hooks import hook_name

    return hook_name(layer, HOOK_KIND)


def _provenance(model: Any) -> dict[str, Any]:
    prov = dict(model.provenance())
    prov.update({"n_layers": int(model.n_layers), "d_model": int(model.d_model)})
    return prov


def _user_text(prompt: Any) -> str:
    """The user message of a one-turn prompt (what steering renders with the chat template)."""
    users = [text for role, text in prompt.messages if role == "user"]
    if not users:
        raise GeomprobeError("steering prompts need a user message; the harmful-harmless set has rows without one")
    return users[-1]


# -- stage 2: caches --------------------------------------------------------------------------
def _cache_sets(model: Any, sets: Mapping[str, Any], folder: Path, hooks: list[str], batch_size: int,
                overwrite: bool, verbose: bool) -> dict[str, Path]:
    from geomprobe.activations.collect import cache_activations

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, prompts in sets.items():
        path = folder / f"{prompts.name}.h5"
        cache_activations(model, prompts, path, hooks=hooks, poolings=("last", "mean"), batch_size=batch_size,
                          overwrite=overwrite, progress=verbose)
        paths[role] = path
    return paths


# -- stage 3: AQI -----------------------------------------------------------------------------
def _aqi_stage(cache: Path, hooks: list[str], sizes: AuditSizes, seed: int, device: str) -> tuple[dict, list]:
    from geomprobe.aqi import aqi_by_layer

    results = aqi_by_layer(cache, hooks=hooks, pooling="last", n_bootstrap=sizes.n_bootstrap,
                           n_permutations=sizes.n_permutations, max_points=sizes.max_points, seed=seed, device=device)
    per_layer = []
    for r in results:
        per_layer.append({
            "layer": r.layer, "hook": r.hook, "n": r.n, "aqi": _finite(r.aqi), "ci_low": _finite(r.aqi_ci_low),
            "ci_high": _finite(r.aqi_ci_high), "p_value": _finite(r.p_value), "davies_bouldin": _finite(r.davies_bouldin),
            "dunn": _finite(r.dunn), "xie_beni": _finite(r.xie_beni), "calinski_harabasz": _finite(r.calinski_harabasz),
        })
    values = np.array([np.nan if r["aqi"] is None else r["aqi"] for r in per_layer])
    best = int(np.nanargmax(values)) if np.isfinite(values).any() else 0
    labels = list(results[0].n_per_class) if results else []
    section = {
        "hook_kind": HOOK_KIND, "pooling": "last", "dtype": "float64", "labels": labels, "per_layer": per_layer,
        "aqi": [r["aqi"] for r in per_layer], "max": _finite(np.nanmax(values)) if np.isfinite(values).any() else None,
        "argmax_layer": per_layer[best]["layer"], "min": _finite(np.nanmin(values)) if np.isfinite(values).any() else None,
        "mean": _finite(np.nanmean(values)) if np.isfinite(values).any() else None,
    }
    return section, results


# -- stage 4: subspace overlap ----------------------------------------------------------------
def _subspace_stage(cache: Path, hooks: list[str], sizes: AuditSizes, seed: int, device: str) -> tuple[dict, list]:
    from geomprobe.subspace import activation_overlap_by_layer

    results = activation_overlap_by_layer(cache, hooks=hooks, pooling="last", energy=sizes.subspace_energy,
                                          n_draws=sizes.n_draws, seed=seed, device=device)
    per_layer = [{
        "layer": r.layer, "hook": r.hook, "mso": _finite(r.mso), "baseline": _finite(r.baseline),
        "baseline_empirical": _finite(r.baseline_empirical), "baseline_empirical_p95": _finite(r.baseline_empirical_p95),
        "excess": _finite(r.mso - r.baseline_empirical), "k_a": int(r.k_a), "k_b": int(r.k_b),
        "mean_diff_in_a": _finite(r.mean_diff_in_a), "mean_diff_in_b": _finite(r.mean_diff_in_b),
    } for r in results]
    mso = np.array([np.nan if r["mso"] is None else r["mso"] for r in per_layer])
    low = int(np.nanargmin(mso)) if np.isfinite(mso).any() else 0
    section = {
        "hook_kind": HOOK_KIND, "pooling": "last", "dtype": "float64",
        "labels": [results[0].label_a, results[0].label_b] if results else [], "per_layer": per_layer,
        "mso": [r["mso"] for r in per_layer], "excess": [r["excess"] for r in per_layer],
        "max": _finite(np.nanmax(mso)) if np.isfinite(mso).any() else None,
        "min": _finite(np.nanmin(mso)) if np.isfinite(mso).any() else None,
        "argmin_layer": per_layer[low]["layer"],
    }
    return section, results


# -- stage 5: probes --------------------------------------------------------------------------
_PROBE_KEYS = ("layer", "hook", "method", "auroc", "recall_at_fpr", "balanced_accuracy", "threshold", "n_eval")


def _probe_stage(cache: Path, control: Path, hooks: list[str], sizes: AuditSizes, seed: int, device: str) -> tuple[dict, dict]:
    from geomprobe.probes import train_probes

    trained: dict[str, Any] = {}
    per_layer: list[dict] = []
    for method in sizes.probe_methods:
        probes, result = train_probes(cache, method, hooks=hooks, pooling="mean", test_size=sizes.probe_test_size,
                                      seed=seed, control=control, fpr=sizes.probe_fpr, device=device)
        trained[method] = (probes, result)
        per_layer += [{k: (_finite(r[k]) if isinstance(r[k], float) else r[k]) for k in _PROBE_KEYS} for r in result.records]
    primary = sizes.probe_methods[0]
    probes, result = trained[primary]
    prim = [r for r in per_layer if r["method"] == primary]
    valid = [r for r in per_layer if r["auroc"] is not None]
    best = max(valid, key=lambda r: (r["auroc"], r["method"] == primary)) if valid else prim[0]
    split = probes.meta.get("split", {})
    section = {
        "hook_kind": HOOK_KIND, "pooling": "mean", "dtype": "float64", "positive_label": probes.positive_label,
        "negative_labels": list(probes.meta.get("negative_labels", [])), "primary_method": primary,
        "methods": list(sizes.probe_methods), "fpr": sizes.probe_fpr,
        "threshold_source": result.records[0].get("threshold_source", "control") if result.records else "control",
        "n_train": int(split.get("n_train", 0)), "n_test": int(split.get("n_test", 0)), "per_layer": per_layer,
        "auroc": [r["auroc"] for r in prim], "recall_at_fpr": [r["recall_at_fpr"] for r in prim],
        "best": {k: best[k] for k in ("layer", "hook", "method", "auroc", "recall_at_fpr")},
    }
    return section, trained


# -- stage 6: steering ------------------------------------------------------------------------
def _steering_rows(prompts: Any, n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, held-out rows) of the harmful-harmless cache: ``n_per_class`` held out per class."""
    labels = prompts.labels
    rng = np.random.default_rng(seed + 7)
    held = []
    for cls in range(len(prompts.label_names)):
        rows = np.flatnonzero(labels == cls)
        if len(rows) < n_per_class + 2:
            raise GeomprobeError(
                f"class {prompts.label_names[cls]!r} has {len(rows)} prompts; steering needs {n_per_class} held out plus 2 "
                "to build the vector (raise the harmful-harmless limit)"
            )
        held.append(np.sort(rng.choice(rows, size=n_per_class, replace=False)))
    held_rows = np.sort(np.concatenate(held))
    train_rows = np.setdiff1d(np.arange(len(labels)), held_rows)
    return train_rows, held_rows


def _build_vector(cache: Path, hook: str, rows: np.ndarray) -> Any:
    from geomprobe.steering import build_from_arrays
    from geomprobe.activations.store import open_cache

    with open_cache(cache) as handle:
        X = handle.read(hook, "last")[rows]
        labels, names, model_id = handle.labels[rows], handle.label_names, handle.model_id
    return build_from_arrays({hook: X}, labels, names, method="mean-diff", pooling="last", model_id=model_id,
                             metadata={"source": "audit", "rows": "harmful-harmless rows not held out for steering"})


def _dose(model: Any, vector: Any, hook: str, harmful: list[str], harmless: list[str], sizes: AuditSizes,
          batch_size: int) -> tuple[Any, Any]:
    from geomprobe.steering import search_layers

    added = search_layers(model, vector, harmful, harmless_prompts=harmless, hooks=[hook],
                          multipliers=sorted(sizes.multipliers), metric="refusal", mode="add", batch_size=batch_size)
    ablated = search_layers(model, vector, harmful, harmless_prompts=harmless, hooks=[hook], metric="refusal",
                            mode="ablate", batch_size=batch_size)
    return added, ablated


def _dose_section(added: Any, ablated: Any) -> dict:
    recs = sorted((r for r in added.records if r.multiplier is not None), key=lambda r: r.multiplier)
    ab = ablated.records[0]
    return {
        "baseline": _finite(added.baseline),
        "multipliers": [float(r.multiplier) for r in recs],
        "refusal": [_finite(r.score_mean) for r in recs],
        "refusal_delta": [_finite(r.score_delta) for r in recs],
        "kl": [_finite(r.kl_mean) for r in recs],
        "kl_max": [_finite(r.kl_max) for r in recs],
        "ablation": {"refusal": _finite(ab.score_mean), "refusal_delta": _finite(ab.score_delta), "kl": _finite(ab.kl_mean)},
    }


def choose_steering_layer(aqi_section: Mapping[str, Any], n_layers: int, max_layer_fraction: float = 0.8) -> tuple[int, str]:
    """The audited layer of highest AQI below ``max_layer_fraction`` of the depth (fallback: shallowest)."""
    limit = int(math.floor(max_layer_fraction * n_layers))
    candidates = [r for r in aqi_section["per_layer"] if r["layer"] < limit and r["aqi"] is not None]
    how = f"highest AQI among audited layers below {max_layer_fraction:.0%} of depth"
    if not candidates:
        candidates = sorted(aqi_section["per_layer"], key=lambda r: r["layer"])[:1]
        how = "shallowest audited layer (no audited layer below the depth limit)"
    best = max(candidates, key=lambda r: (r["aqi"] if r["aqi"] is not None else -1.0, -r["layer"]))
    return int(best["layer"]), how


# -- stage 7: comparison ----------------------------------------------------------------------
def _paired(a_recs: list[dict], b_recs: list[dict], key: str) -> dict:
    per_layer = []
    for ra, rb in zip(a_recs, b_recs):
        va, vb = ra.get(key), rb.get(key)
        delta = None if va is None or vb is None else vb - va
        per_layer.append({"layer": ra["layer"], "hook": ra["hook"], "a": va, "b": vb, "delta": delta})
    deltas = [r["delta"] for r in per_layer]
    finite = [abs(d) for d in deltas if d is not None]
    return {"per_layer": per_layer, "delta": deltas, "max_abs_delta": max(finite) if finite else None}


def _mean_diff_directions(cache: Path, hooks: list[str]) -> dict[str, np.ndarray]:
    from geomprobe.activations.store import open_cache

    out = {}
    with open_cache(cache) as handle:
        labels = handle.labels
        for hook in hooks:
            X = handle.read(hook, "last").astype(np.float64)
            d = X[labels == 1].mean(0) - X[labels == 0].mean(0)
            out[hook] = d
    return out


def _transfer_probes(trained_a: Any, honesty_b: Path, control_b: Path, hooks: list[str], fpr: float) -> dict:
    """a's probes on b's activations of a's held-out rows; threshold from b's control scores."""
    from geomprobe.core.hooks import hook_layer
    from geomprobe.probes import score_control
    from geomprobe.probes.pipeline import layer_records, read_layers
    from geomprobe.activations.store import open_cache

    probes, result_a = trained_a
    test_rows = np.asarray(probes.meta["split"]["test_rows"], dtype=np.int64)
    with open_cache(honesty_b) as handle:
        pos = list(handle.label_names).index(probes.positive_label)
        y = (handle.labels[test_rows] == pos).astype(np.int64)
        X = read_layers(handle, hooks, probes.pooling, rows=test_rows)
    scores = np.stack([probes.decision_function(h, X[i]) for i, h in enumerate(hooks)])
    control = score_control(probes, control_b)
    records = layer_records(hooks, scores, y, pooling=probes.pooling, method=probes.method,
                            control=np.stack([control[h] for h in hooks]), fpr=fpr)
    own = {r["hook"]: r["auroc"] for r in result_a.records}
    per_layer = []
    for r in records:
        a_val, b_val = _finite(own.get(r["hook"])), _finite(r["auroc"])
        per_layer.append({"layer": hook_layer(r["hook"]), "hook": r["hook"], "auroc_a": a_val, "auroc": b_val,
                          "recall_at_fpr": _finite(r["recall_at_fpr"]),
                          "delta": None if a_val is None or b_val is None else b_val - a_val})
    return {"per_layer": per_layer, "auroc": [r["auroc"] for r in per_layer], "delta": [r["delta"] for r in per_layer]}


def _weights_stage(model_a: Any, model_b: Any, directions: Mapping[str, np.ndarray], layers: list[int],
                   sizes: AuditSizes, device: str) -> dict:
    """Per 2-D matrix of a (embeddings and LM head skipped): the update ``U = W_b - W_a``, the
    overlap of U's top left singular subspace with W_a's (the subspace stage's
    ``weight_update_overlap`` with two checkpoints), and U's energy along a's direction.
    """
    import torch

    from geomprobe.models import resolve_device
    from geomprobe.subspace import weight_matrices, weight_update_overlap

    dev = resolve_device(device)
    overlaps = weight_update_overlap(model_a, model_b, energy=sizes.subspace_energy, device=str(dev))
    transposed = {m.name: m.transposed for m in weight_matrices(model_a.hf_model)}

    def state(model: Any) -> dict[str, torch.Tensor]:
        return {k.replace("._original_component", ""): v for k, v in model.hf_model.state_dict().items()}

    sa, sb = state(model_a), state(model_b)
    d = int(model_a.d_model)
    per_matrix = []
    for o in overlaps:
        ok = o.status == "ok"
        rec = {"layer": o.layer, "module": o.module, "norm_u": o.norm_a, "norm_w": o.norm_b,
               "mso": o.mso if ok else None, "baseline": o.baseline if ok else None,
               "inside": o.energy_a_in_b if ok else None, "along": None}
        hook = _hook(o.layer) if o.layer >= 0 else ""
        if ok and hook in directions and o.module in RESIDUAL_WRITERS and o.shape[0] == d:
            U = sb[o.name].to(dev, torch.float64) - sa[o.name].to(dev, torch.float64)
            if transposed.get(o.name):  # GPT-2 Conv1D stores (in, out)
                U = U.T
            r = torch.as_tensor(directions[hook], dtype=torch.float64, device=dev)
            r = r / r.norm()
            rec["along"] = float(((r @ U) ** 2).sum()) / o.norm_a**2
        per_matrix.append(rec)
    per_layer = []
    for layer in sorted({r["layer"] for r in per_matrix if r["layer"] >= 0}):
        recs = [r for r in per_matrix if r["layer"] == layer]
        changed = [r for r in recs if r["norm_u"] > 0]
        base = math.sqrt(sum(r["norm_w"] ** 2 for r in recs))
        weight = sum(r["norm_u"] ** 2 for r in changed)
        writers = [r for r in changed if r["along"] is not None]
        writer_energy = sum(r["norm_u"] ** 2 for r in writers)
        per_layer.append({
            "layer": layer, "n_changed": len(changed),
            "relative_update_norm": math.sqrt(weight) / base if base > 0 else None,
            "mso_mean": float(np.mean([r["mso"] for r in changed])) if changed else None,
            "baseline_mean": float(np.mean([r["baseline"] for r in changed])) if changed else None,
            "update_in_weight_subspace": sum(r["inside"] * r["norm_u"] ** 2 for r in changed) / weight if weight > 0 else None,
            "update_along_direction": sum(r["along"] * r["norm_u"] ** 2 for r in writers) / writer_energy
            if writer_energy > 0 else None,
        })
    total_u = math.sqrt(sum(r["norm_u"] ** 2 for r in per_matrix))
    total_w = math.sqrt(sum(r["norm_w"] ** 2 for r in per_matrix))
    audited = {r["layer"]: r for r in per_layer}
    return {
        "n_matrices": len(per_matrix), "n_changed": int(sum(r["norm_u"] > 0 for r in per_matrix)),
        "relative_update_norm": total_u / total_w if total_w > 0 else None, "energy": sizes.subspace_energy,
        "per_layer": per_layer,
        "update_along_direction": [(audited.get(layer) or {}).get("update_along_direction") for layer in layers],
        "direction_baseline": 1.0 / d,
    }


# -- plots and tokens -------------------------------------------------------------------------
def _pca_layers(layers: list[int], best: int, panels: int) -> list[int]:
    if len(layers) <= panels:
        return list(layers)
    picks = {layers[int(round(i))] for i in np.linspace(0, len(layers) - 1, max(panels - 1, 2))}
    picks.add(best)
    ordered = sorted(picks)
    while len(ordered) > panels:  # drop the neighbour of the best layer first, never the best
        drop = min((v for v in ordered if v != best), key=lambda v: abs(v - best))
        ordered.remove(drop)
    return ordered


def _token_example(model: Any, honesty: Any, probes: Any, hook: str, n: int) -> tuple[list, list, list, list]:
    """Token strings, per-token scores, response starts and labels of ``n`` held-out honesty prompts."""
    from geomprobe.activations.collect import pooled_activations
    from geomprobe.activations.datasets import PromptSet

    test_rows = [int(v) for v in probes.meta["split"]["test_rows"]]
    by_label: dict[int, list[int]] = {}
    for row in test_rows:
        by_label.setdefault(int(honesty.prompts[row].label), []).append(row)
    chosen: list[int] = []
    while len(chosen) < n and any(by_label.values()):
        for cls in sorted(by_label):
            if by_label[cls] and len(chosen) < n:
                chosen.append(by_label[cls].pop(0))
    subset = PromptSet(honesty.name, [honesty.prompts[i] for i in chosen], honesty.label_names, honesty.sha256, honesty.path)
    rendered = subset.render(model.tokenizer)
    X = pooled_activations(model, subset, hooks=[hook], poolings=("all",))[hook]["all"]
    tokens, scores, starts, labels = [], [], [], []
    offset = 0
    for prompt, r in zip(subset.prompts, rendered):
        count = len(r.token_ids)
        tokens.append([model.tokenizer.decode([t]) for t in r.token_ids])
        scores.append(probes.decision_function(hook, X[offset:offset + count]))
        starts.append(int(r.span[0]))
        labels.append(honesty.label_names[prompt.label])
        offset += count
    return tokens, scores, starts, labels


# -- the audit --------------------------------------------------------------------------------
def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise GeomprobeError(f"--out {str(out_dir)!r} is a file; give a folder for the report")
    if (out_dir / "metrics.json").exists() and not overwrite:
        raise GeomprobeError(f"{out_dir} already holds an audit (metrics.json); pass --overwrite or another --out")
    if not out_dir.parent.exists():
        raise GeomprobeError(f"folder {str(out_dir.parent)!r} for --out does not exist; create it first")


def _model_type(model: Any) -> str:
    return str(getattr(getattr(model.hf_model, "config", None), "model_type", "") or "unknown")


def _load(model: Any, dtype: str, device: str) -> Any:
    from geomprobe.models import LoadedModel, load_model

    if isinstance(model, LoadedModel):
        return model
    return load_model(model, dtype=dtype, device=device)


def run_audit(
    model: Any = "default",
    against: Any = None,
    out_dir: str | Path = "audit",
    *,
    quick: bool = False,
    sizes: AuditSizes | None = None,
    layers: Sequence[int] | None = None,
    fail_if: Sequence[str] | None = None,
    seed: int = 0,
    dtype: str = "float32",
    device: str = "auto",
    batch_size: int = 16,
    overwrite: bool = False,
    progress: ProgressFn | bool | None = None,
) -> AuditResult:
    """Audit a checkpoint (and compare it with ``against``); write metrics.json, plots and reports.

    ``model``/``against``: ``"default"``, a folder, a ``.gguf`` file, a hub name or a loaded
    :class:`~geomprobe.models.LoadedModel`. ``sizes`` overrides :data:`FULL` (or :data:`QUICK`
    when ``quick``); ``layers`` picks block indices instead of the size's stride. ``fail_if``
    conditions are checked before any work and evaluated at the end (see ``result.gates``).
    ``progress``: ``True`` prints each stage to stderr, or pass ``fn(stage, message)``.
    """
    from geomprobe.plots._style import save_figure
    from geomprobe.audit.report import FigureRef, write_report

    conditions: list[FailCondition] = parse_conditions(fail_if, against=against is not None)
    sizes = sizes or (QUICK if quick else FULL)
    if sizes.steering_prompts < 1 or not sizes.multipliers or not sizes.probe_methods:
        raise GeomprobeError("audit sizes need steering_prompts >= 1, some multipliers and some probe methods")
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    report = _resolve_progress(progress)
    verbose_bars = progress is True and sys.stderr.isatty()
    clock = _Clock(report)
    resolved_device = str(device)

    from geomprobe.activations.datasets import load_prompt_set

    limits = {"harmful_harmless": sizes.limit_harmful_harmless, "honesty": sizes.limit_honesty, "control": sizes.limit_control}
    sets = {role: load_prompt_set(name, limit=limits[role], seed=seed) for role, name in DATASETS}

    model_a = clock.run("load", f"loading {getattr(model, 'model_id', model)}", lambda: _load(model, dtype, device))
    model_b = None
    if against is not None:
        model_b = clock.run("load", f"loading {getattr(against, 'model_id', against)} (--against)",
                            lambda: _load(against, dtype, device))
        shape_a = (_model_type(model_a), model_a.n_layers, model_a.d_model)
        shape_b = (_model_type(model_b), model_b.n_layers, model_b.d_model)
        if shape_a != shape_b:
            raise GeomprobeError(
                f"--against model is {shape_b[0]} with {shape_b[1]} layers x d_model {shape_b[2]}, the audited one "
                f"{shape_a[0]} with {shape_a[1]} x {shape_a[2]}; compare checkpoints of the same architecture"
            )
    layer_list = audited_layers(model_a.n_layers, sizes.layer_stride, layers)
    hooks = [_hook(layer) for layer in layer_list]
    out_dir.mkdir(exist_ok=True)
    fig_dir = out_dir
    caches_a = clock.run(
        "cache", f"caching {', '.join(s.name for s in sets.values())} ({sum(len(s) for s in sets.values())} prompts, "
        f"{len(hooks)} layers)",
        lambda: _cache_sets(model_a, sets, out_dir / "caches", hooks, batch_size, True, verbose_bars),
    )
    caches_b = None
    if model_b is not None:
        caches_b = clock.run("cache", "caching the same sets on the --against model",
                             lambda: _cache_sets(model_b, sets, out_dir / "caches" / "against", hooks, batch_size, True, verbose_bars))

    aqi, aqi_results = clock.run("aqi", f"AQI with {sizes.n_bootstrap} bootstrap / {sizes.n_permutations} permutations "
                                 f"per layer", lambda: _aqi_stage(caches_a["harmful_harmless"], hooks, sizes, seed, device))
    subspace, overlap_results = clock.run("subspace", "activation-subspace overlap",
                                          lambda: _subspace_stage(caches_a["harmful_harmless"], hooks, sizes, seed, device))
    probes, trained = clock.run("probes", f"training {', '.join(sizes.probe_methods)} probes",
                                lambda: _probe_stage(caches_a["honesty"], caches_a["control"], hooks, sizes, seed, device))

    steer_layer, selected_by = choose_steering_layer(aqi, model_a.n_layers, sizes.max_layer_fraction)
    steer_hook = _hook(steer_layer)
    hh = sets["harmful_harmless"]
    train_rows, held_rows = _steering_rows(hh, sizes.steering_prompts, seed)
    positive = hh.label_names.index("harmful") if "harmful" in hh.label_names else 1
    harmful = [_user_text(hh.prompts[i]) for i in held_rows if hh.prompts[i].label == positive]
    harmless = [_user_text(hh.prompts[i]) for i in held_rows if hh.prompts[i].label != positive]
    vector_a = _build_vector(caches_a["harmful_harmless"], steer_hook, train_rows)
    added, ablated = clock.run("steering", f"dose-response at {steer_hook} ({len(sizes.multipliers)} multipliers + ablation)",
                               lambda: _dose(model_a, vector_a, steer_hook, harmful, harmless, sizes, batch_size))
    steering = {
        "hook": steer_hook, "layer": steer_layer, "selected_by": selected_by, "vector_method": "mean-diff",
        "pooling": "last", "vector_norm": float(vector_a.norms[steer_hook]), "metric": "refusal",
        **_dose_section(added, ablated), "best": None, "n_prompts": len(harmful), "n_harmless": len(harmless),
    }
    ok = [(m, r, k) for m, r, k in zip(steering["multipliers"], steering["refusal"], steering["kl"])
          if r is not None and (k is None or k <= sizes.kl_limit)]
    if ok:
        m, r, k = max(ok, key=lambda t: t[1])
        steering["best"] = {"multiplier": m, "refusal": r, "kl": k}

    comparison = None
    if model_b is not None:
        assert caches_b is not None
        aqi_b, _ = clock.run("aqi", "AQI on the --against model",
                             lambda: _aqi_stage(caches_b["harmful_harmless"], hooks, sizes, seed, device))
        sub_b, _ = clock.run("subspace", "subspace overlap on the --against model",
                             lambda: _subspace_stage(caches_b["harmful_harmless"], hooks, sizes, seed, device))
        probes_b, _ = clock.run("probes", "probes on the --against model",
                                lambda: _probe_stage(caches_b["honesty"], caches_b["control"], hooks, sizes, seed, device))
        primary = sizes.probe_methods[0]
        prim_a = [r for r in probes["per_layer"] if r["method"] == primary]
        prim_b = [r for r in probes_b["per_layer"] if r["method"] == primary]
        transfer_probes = clock.run("transfer", "scoring the first model's probes on the second",
                                    lambda: _transfer_probes(trained[primary], caches_b["honesty"], caches_b["control"],
                                                             hooks, sizes.probe_fpr))
        dirs_a = _mean_diff_directions(caches_a["harmful_harmless"], hooks)
        dirs_b = _mean_diff_directions(caches_b["harmful_harmless"], hooks)
        cos = []
        for layer, hook in zip(layer_list, hooks):
            na, nb = np.linalg.norm(dirs_a[hook]), np.linalg.norm(dirs_b[hook])
            cos.append({"layer": layer, "hook": hook,
                        "cosine": float(dirs_a[hook] @ dirs_b[hook] / (na * nb)) if na > 0 and nb > 0 else None})
        vector_b = _build_vector(caches_b["harmful_harmless"], steer_hook, train_rows)
        t_added, t_ablated = clock.run("steering", f"the first model's vector on the second at {steer_hook}",
                                       lambda: _dose(model_b, vector_a, steer_hook, harmful, harmless, sizes, batch_size))
        b_added, b_ablated = clock.run("steering", "the second model's own vector",
                                       lambda: _dose(model_b, vector_b, steer_hook, harmful, harmless, sizes, batch_size))
        t_dose, b_dose = _dose_section(t_added, t_ablated), _dose_section(b_added, b_ablated)
        weights = clock.run("weights", "weight-space update overlap",
                            lambda: _weights_stage(model_a, model_b, dirs_a, layer_list, sizes, device))
        comparison = {
            "aqi": _paired(aqi["per_layer"], aqi_b["per_layer"], "aqi"),
            "subspace": _paired(subspace["per_layer"], sub_b["per_layer"], "mso"),
            "probes": _paired(prim_a, prim_b, "auroc"),
            "steering": {
                "hook": steer_hook, "baseline_a": steering["baseline"], "baseline_b": b_dose["baseline"],
                "baseline_delta": None if steering["baseline"] is None or b_dose["baseline"] is None
                else b_dose["baseline"] - steering["baseline"],
                "refusal_b": b_dose["refusal"], "kl_b": b_dose["kl"],
            },
            "transfer": {
                "probes": transfer_probes,
                "directions": {"per_layer": cos, "cosine": [r["cosine"] for r in cos]},
                "steering": {"hook": steer_hook, "baseline": t_dose["baseline"], "multipliers": t_dose["multipliers"],
                             "refusal": t_dose["refusal"], "refusal_delta": t_dose["refusal_delta"], "kl": t_dose["kl"]},
            },
            "weights": weights,
        }

    from geomprobe.core import __version__

    settings = {
        "quick": bool(quick), "seed": int(seed), "hook_kind": HOOK_KIND, "hooks": hooks, "layers": layer_list,
        "batch_size": int(batch_size), "metric_dtype": "float64", "store_dtype": "float32",
        "datasets": {
            role: {"name": s.name, "sha256": s.sha256, "n_prompts": len(s), "limit": limits[role],
                   "label_names": list(s.label_names), "cache": str(caches_a[role].relative_to(out_dir))}
            for role, s in sets.items()
        },
        "aqi": {"pooling": "last", "n_bootstrap": sizes.n_bootstrap, "n_permutations": sizes.n_permutations,
                "ci_level": 0.95, "max_points": sizes.max_points, "gamma": 0.5},
        "subspace": {"pooling": "last", "energy": sizes.subspace_energy, "n_draws": sizes.n_draws, "centered": True},
        "probes": {"pooling": "mean", "methods": list(sizes.probe_methods), "primary_method": sizes.probe_methods[0],
                   "test_size": sizes.probe_test_size, "fpr": sizes.probe_fpr},
        "steering": {"pooling": "last", "vector_method": "mean-diff", "metric": "refusal",
                     "multipliers": sorted(float(m) for m in sizes.multipliers),
                     "n_prompts_per_class": sizes.steering_prompts, "kl_limit": sizes.kl_limit,
                     "max_layer_fraction": sizes.max_layer_fraction, "positions": "all"},
    }
    metrics: dict[str, Any] = {
        "schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, "geomprobe_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "model": _provenance(model_a), "against": _provenance(model_b) if model_b is not None else None,
        "settings": settings, "timings_s": {}, "aqi": aqi, "subspace": subspace, "probes": probes,
        "steering": steering, "comparison": comparison,
    }
    metrics_path = _write_metrics(out_dir, metrics, clock.timings)

    # -- plots --------------------------------------------------------------------------------
    def make_plots() -> list[FigureRef]:
        from geomprobe.plots.geometry import plot_aqi_layers
        from geomprobe.plots.overview import plot_comparison, plot_pca_grid, plot_token_scores
        from geomprobe.plots.probes import plot_probe_layers
        from geomprobe.plots.steering import dose_response
        from geomprobe.plots.subspace import plot_activation_overlap
        from geomprobe.activations.store import open_cache

        model_id = model_a.model_id if len(model_a.model_id) <= 40 else "…" + model_a.model_id[-39:]
        refs = []

        def add(key: str, section: str, title: str, fig: Any, caption: str = "") -> None:
            path = save_figure(fig, fig_dir / f"{key}.png")
            refs.append(FigureRef(key, section, title, path, caption))

        add("aqi_layers", "aqi", "AQI by layer with bootstrap band, and the four indices",
            plot_aqi_layers(aqi_results, model_id=model_id))
        pca_layers = _pca_layers(layer_list, aqi["argmax_layer"], sizes.pca_panels)
        with open_cache(caches_a["harmful_harmless"]) as handle:
            labels = handle.labels
            acts = {layer: handle.read(_hook(layer), "last") for layer in pca_layers}
            names = list(handle.label_names)
        add("pca_grid", "aqi", "2-D PCA projection of both classes", plot_pca_grid(
            acts, labels, class_names=names, model_id=model_id, hook_kind=HOOK_KIND, pooling="last",
            highlight=aqi["argmax_layer"]))
        add("subspace_overlap", "subspace", "Subspace overlap vs layer with random baseline; principal cosines",
            plot_activation_overlap(overlap_results, title=f"{model_id}: harmful vs harmless subspaces ({HOOK_KIND}, last pooling)"))
        add("probe_layers", "probes", "Held-out probe AUROC and recall by layer, per probe type",
            plot_probe_layers(probes["per_layer"], model_id=model_id))
        add("dose_response", "steering", "Refusal dose-response and KL side effect", dose_response(added))
        best = probes["best"]
        primary_probes = trained[best["method"]][0]
        tokens, scores, starts, tlabels = _token_example(
            model_a, sets["honesty"], primary_probes, best["hook"], sizes.token_prompts)
        add("token_scores", "probes", f"Token-level scores of the best probe ({best['method']}, layer {best['layer']})",
            plot_token_scores(tokens, scores, response_start=starts, labels=tlabels, model_id=model_id,
                              hook=best["hook"], pooling="mean"),
            "held-out honesty prompts; the probe was trained on the mean over the statement")
        if comparison is not None:
            add("comparison", "comparison", "Checkpoint a vs b", plot_comparison(metrics))
        return refs

    figures = clock.run("plots", "drawing plots", make_plots)
    gates = evaluate_conditions(conditions, metrics)
    html_path, md_path = clock.run("report", "writing report.html and report.md",
                                   lambda: write_report(metrics, figures, out_dir, gates))
    metrics_path = _write_metrics(out_dir, metrics, clock.timings)
    caches = dict(caches_a)
    if caches_b:
        caches.update({f"against_{k}": v for k, v in caches_b.items()})
    return AuditResult(metrics, out_dir, metrics_path, html_path, md_path, {f.key: f.path for f in figures}, caches, gates)


def _write_metrics(out_dir: Path, metrics: dict[str, Any], timings: Mapping[str, float]) -> Path:
    from geomprobe.core.io import write_json

    metrics["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    return write_json(out_dir / "metrics.json", metrics)


def load_metrics(path: str | Path) -> dict[str, Any]:
    """Read an audit's metrics.json (a folder holding one works too) and check its schema version."""
    import json

    from geomprobe.audit.schema import check_schema_header

    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise GeomprobeError(f"{path} does not exist; run geomprobe audit first")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GeomprobeError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    check_schema_header(metrics, str(path))
    return metrics
