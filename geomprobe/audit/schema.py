"""The ``metrics.json`` schema of ``geomprobe audit``: every field, its type and meaning.

The schema is a flat list of dotted paths (``[]`` marks the items of a list). It drives three
things: :func:`validate_metrics` (a written file matches the version it claims),
``--fail-if`` path checks made before any work (:mod:`geomprobe.audit.conditions`), and the
field table in ``docs/audit.md`` (:func:`schema_markdown`). Bump :data:`SCHEMA_VERSION` when a
field is renamed, removed or changes meaning; adding a field keeps the version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geomprobe.core.errors import GeomprobeError

SCHEMA_NAME = "geomprobe-audit"
SCHEMA_VERSION = 1

# Types: number (float, null when undefined/inf), integer, string, bool, object, list[...] of those.
_PROVENANCE = [
    ("model_id", "string", "model name, or the resolved folder / GGUF stem"),
    ("model_source", "string", "where the weights were read from (folder, .gguf file or hub name)"),
    ("model_revision", "string", "content fingerprint: `gguf-sha256:...`, `folder:...` or a hub revision"),
    ("model_dtype", "string", "dtype the forward passes ran in (float32, bfloat16, float16)"),
    ("device", "string", "device the forward passes ran on"),
    ("gguf_sha256", "string", "SHA-256 of the GGUF file, empty for other sources"),
    ("n_layers", "integer", "number of transformer blocks"),
    ("d_model", "integer", "residual-stream width"),
]

_PAIR = [
    ("layer", "integer", "block index"),
    ("hook", "string", "TransformerLens hook name"),
    ("a", "number", "value on the audited checkpoint (`--model`)"),
    ("b", "number", "value on the second checkpoint (`--against`)"),
    ("delta", "number", "b - a"),
]

FIELDS: list[tuple[str, str, str]] = [
    ("schema", "string", f"always `{SCHEMA_NAME}`"),
    ("schema_version", "integer", f"version of this layout (now {SCHEMA_VERSION})"),
    ("geomprobe_version", "string", "geomprobe version that wrote the file"),
    ("created_utc", "string", "ISO 8601 time the audit finished"),
    ("model", "object", "provenance of the audited checkpoint"),
    *[(f"model.{k}", t, d) for k, t, d in _PROVENANCE],
    ("against", "object|null", "provenance of the `--against` checkpoint (same fields as `model`), null without it"),
    *[(f"against.{k}", t, d) for k, t, d in _PROVENANCE],
    ("settings", "object", "everything that decides the numbers"),
    ("settings.quick", "bool", "`--quick` sizes were used"),
    ("settings.seed", "integer", "seed of every random choice (subsets, splits, bootstrap, permutations)"),
    ("settings.hook_kind", "string", "hook read at every layer (`resid_post`: the output of block l)"),
    ("settings.hooks", "list[string]", "hooks audited, in layer order"),
    ("settings.layers", "list[integer]", "block indices audited"),
    ("settings.batch_size", "integer", "prompts per forward pass when caching"),
    ("settings.metric_dtype", "string", "dtype every metric was computed in (float64)"),
    ("settings.store_dtype", "string", "dtype activations were stored in (float32)"),
    ("settings.datasets", "object", "the prompt sets, keyed `harmful_harmless`, `honesty`, `control`"),
    ("settings.datasets.*", "object", "one prompt set"),
    ("settings.datasets.*.name", "string", "bundled set name or file stem"),
    ("settings.datasets.*.sha256", "string", "SHA-256 of the set's file"),
    ("settings.datasets.*.n_prompts", "integer", "prompts cached (after `limit`)"),
    ("settings.datasets.*.limit", "integer|null", "stratified subset size asked for (null: all rows)"),
    ("settings.datasets.*.label_names", "list[string]", "label index order of the cache"),
    ("settings.datasets.*.cache", "string", "cache file, relative to the output folder"),
    ("settings.aqi", "object", "AQI settings"),
    ("settings.aqi.pooling", "string", "pooling read (`last`: last token of the rendered prompt)"),
    ("settings.aqi.n_bootstrap", "integer", "stratified bootstrap replicates for the interval"),
    ("settings.aqi.n_permutations", "integer", "label permutations for the p-value"),
    ("settings.aqi.ci_level", "number", "interval level"),
    ("settings.aqi.max_points", "integer", "rows used for resampling at most (stratified subsample above it)"),
    ("settings.aqi.gamma", "number", "AQI weight of the Davies-Bouldin term"),
    ("settings.subspace", "object", "activation-subspace settings"),
    ("settings.subspace.pooling", "string", "pooling read"),
    ("settings.subspace.energy", "number", "energy fraction each class basis holds"),
    ("settings.subspace.n_draws", "integer", "random subspace pairs for the empirical baseline"),
    ("settings.subspace.centered", "bool", "activations centred per class before the basis"),
    ("settings.probes", "object", "probe settings"),
    ("settings.probes.pooling", "string", "pooling read (`mean`: mean over the assistant statement = mean token score)"),
    ("settings.probes.methods", "list[string]", "probe types trained at every layer"),
    ("settings.probes.primary_method", "string", "method whose numbers fill `probes.auroc` / `probes.recall_at_fpr`"),
    ("settings.probes.test_size", "number", "held-out fraction (pairs kept together)"),
    ("settings.probes.fpr", "number", "false-positive rate on the control set that sets the recall threshold"),
    ("settings.steering", "object", "steering settings"),
    ("settings.steering.pooling", "string", "pooling the vector was read with"),
    ("settings.steering.vector_method", "string", "how the direction was built (`mean-diff`: harmful - harmless)"),
    ("settings.steering.metric", "string", "behaviour metric (`refusal`: log-odds of a refusal first token)"),
    ("settings.steering.multipliers", "list[number]", "multipliers of the vector tried"),
    ("settings.steering.n_prompts_per_class", "integer", "held-out harmful (metric) and harmless (KL) prompts"),
    ("settings.steering.kl_limit", "number", "largest mean KL accepted for `steering.best`"),
    ("settings.steering.max_layer_fraction", "number", "layers at or above this fraction of depth are not chosen"),
    ("settings.steering.positions", "string", "positions the vector is added at"),
    ("timings_s", "object", "wall-clock seconds per stage (`load`, `cache`, `aqi`, ...)"),
    # -- AQI -------------------------------------------------------------------------------
    ("aqi", "object", "Alignment Quality Index of harmful vs harmless prompts per layer"),
    ("aqi.hook_kind", "string", "hook kind read"),
    ("aqi.pooling", "string", "pooling read"),
    ("aqi.dtype", "string", "computation dtype (float64)"),
    ("aqi.labels", "list[string]", "[negative, positive] classes"),
    ("aqi.per_layer", "list[object]", "one record per audited layer"),
    ("aqi.per_layer[].layer", "integer", "block index"),
    ("aqi.per_layer[].hook", "string", "hook name"),
    ("aqi.per_layer[].n", "integer", "rows used"),
    ("aqi.per_layer[].aqi", "number", "AQI = 0.5/(1+DBS) + 0.5*DI/(1+DI), in [0, 1]"),
    ("aqi.per_layer[].ci_low", "number", "bootstrap interval low end"),
    ("aqi.per_layer[].ci_high", "number", "bootstrap interval high end"),
    ("aqi.per_layer[].p_value", "number|null", "label-permutation p-value of AQI (null: not tested)"),
    ("aqi.per_layer[].davies_bouldin", "number", "Davies-Bouldin index (lower = better separated; null = inf)"),
    ("aqi.per_layer[].dunn", "number", "Dunn index (higher = better; set by single extreme pairs)"),
    ("aqi.per_layer[].xie_beni", "number", "hard Xie-Beni index (lower = better; null = inf)"),
    ("aqi.per_layer[].calinski_harabasz", "number", "Calinski-Harabasz index (higher = better)"),
    ("aqi.aqi", "list[number]", "AQI per audited layer (same order as `settings.layers`)"),
    ("aqi.max", "number", "largest AQI over layers"),
    ("aqi.argmax_layer", "integer", "layer of `aqi.max`"),
    ("aqi.min", "number", "smallest AQI over layers"),
    ("aqi.mean", "number", "mean AQI over layers"),
    # -- subspace --------------------------------------------------------------------------
    ("subspace", "object", "overlap of the harmful and harmless activation subspaces per layer"),
    ("subspace.hook_kind", "string", "hook kind read"),
    ("subspace.pooling", "string", "pooling read"),
    ("subspace.dtype", "string", "computation dtype (float64)"),
    ("subspace.labels", "list[string]", "[class A, class B]"),
    ("subspace.per_layer", "list[object]", "one record per audited layer"),
    ("subspace.per_layer[].layer", "integer", "block index"),
    ("subspace.per_layer[].hook", "string", "hook name"),
    ("subspace.per_layer[].mso", "number", "mode subspace overlap ||Qa^T Qb||_F^2 / min(ka, kb), in [0, 1]"),
    ("subspace.per_layer[].baseline", "number", "random baseline max(ka, kb) / d"),
    ("subspace.per_layer[].baseline_empirical", "number", "mean MSO of random subspace pairs of the same sizes"),
    ("subspace.per_layer[].baseline_empirical_p95", "number", "95th percentile of those"),
    ("subspace.per_layer[].excess", "number", "mso - baseline_empirical"),
    ("subspace.per_layer[].k_a", "integer", "basis size of class A"),
    ("subspace.per_layer[].k_b", "integer", "basis size of class B"),
    ("subspace.per_layer[].mean_diff_in_a", "number", "squared cosine of the class-mean difference with span(Qa)"),
    ("subspace.per_layer[].mean_diff_in_b", "number", "same with span(Qb)"),
    ("subspace.mso", "list[number]", "MSO per audited layer"),
    ("subspace.excess", "list[number]", "MSO minus the empirical random baseline per layer"),
    ("subspace.max", "number", "largest MSO"),
    ("subspace.min", "number", "smallest MSO"),
    ("subspace.argmin_layer", "integer", "layer of `subspace.min` (most distinct subspaces)"),
    # -- probes ----------------------------------------------------------------------------
    ("probes", "object", "linear honesty probes (dishonest = positive), held-out evaluation"),
    ("probes.hook_kind", "string", "hook kind read"),
    ("probes.pooling", "string", "pooling read"),
    ("probes.dtype", "string", "score dtype (float64)"),
    ("probes.positive_label", "string", "positive class"),
    ("probes.negative_labels", "list[string]", "negative classes"),
    ("probes.primary_method", "string", "method of `probes.auroc` / `probes.recall_at_fpr`"),
    ("probes.methods", "list[string]", "methods trained"),
    ("probes.fpr", "number", "control false-positive rate of the threshold"),
    ("probes.threshold_source", "string", "`control`: (1 - fpr) quantile of scores on the control set"),
    ("probes.n_train", "integer", "training rows"),
    ("probes.n_test", "integer", "held-out rows (no pair split across train/test)"),
    ("probes.per_layer", "list[object]", "one record per (method, layer)"),
    ("probes.per_layer[].layer", "integer", "block index"),
    ("probes.per_layer[].hook", "string", "hook name"),
    ("probes.per_layer[].method", "string", "probe type"),
    ("probes.per_layer[].auroc", "number", "held-out AUROC"),
    ("probes.per_layer[].recall_at_fpr", "number", "held-out recall of dishonest rows at the control threshold"),
    ("probes.per_layer[].balanced_accuracy", "number", "held-out balanced accuracy at score 0"),
    ("probes.per_layer[].threshold", "number", "score threshold from the control set"),
    ("probes.per_layer[].n_eval", "integer", "held-out rows scored"),
    ("probes.auroc", "list[number]", "held-out AUROC of the primary method per layer"),
    ("probes.recall_at_fpr", "list[number]", "recall at `fpr` of the primary method per layer"),
    ("probes.best", "object", "best (method, layer) by AUROC"),
    ("probes.best.layer", "integer", "block index"),
    ("probes.best.hook", "string", "hook name"),
    ("probes.best.method", "string", "probe type"),
    ("probes.best.auroc", "number", "held-out AUROC"),
    ("probes.best.recall_at_fpr", "number", "recall at the control threshold"),
    # -- steering --------------------------------------------------------------------------
    ("steering", "object", "dose-response of the harmful-harmless direction at one layer"),
    ("steering.hook", "string", "hook the vector is added at"),
    ("steering.layer", "integer", "its block index"),
    ("steering.selected_by", "string", "how the layer was chosen"),
    ("steering.vector_method", "string", "direction method"),
    ("steering.pooling", "string", "pooling the direction was read with"),
    ("steering.vector_norm", "number", "L2 norm of the vector at multiplier 1"),
    ("steering.metric", "string", "behaviour metric on harmful prompts"),
    ("steering.baseline", "number", "unsteered mean refusal log-odds on the held-out harmful prompts"),
    ("steering.multipliers", "list[number]", "multipliers, ascending"),
    ("steering.refusal", "list[number]", "mean refusal log-odds per multiplier"),
    ("steering.refusal_delta", "list[number]", "refusal - baseline per multiplier"),
    ("steering.kl", "list[number]", "mean KL(unsteered || steered) on harmless prompts per multiplier, nats"),
    ("steering.kl_max", "list[number]", "largest per-prompt KL per multiplier"),
    ("steering.ablation", "object", "the direction projected out at every layer instead of added"),
    ("steering.ablation.refusal", "number", "mean refusal log-odds"),
    ("steering.ablation.refusal_delta", "number", "minus the baseline"),
    ("steering.ablation.kl", "number", "mean KL on harmless prompts"),
    ("steering.best", "object|null", "multiplier with the highest refusal whose KL <= kl_limit"),
    ("steering.best.multiplier", "number", "multiplier"),
    ("steering.best.refusal", "number", "mean refusal log-odds"),
    ("steering.best.kl", "number", "mean KL"),
    ("steering.n_prompts", "integer", "harmful prompts scored"),
    ("steering.n_harmless", "integer", "harmless prompts for KL"),
    # -- comparison ------------------------------------------------------------------------
    ("comparison", "object|null", "differences against the `--against` checkpoint, null without it"),
    ("comparison.aqi", "object", "AQI per layer on both checkpoints"),
    *[(f"comparison.aqi.per_layer[].{k}", t, d) for k, t, d in _PAIR],
    ("comparison.aqi.per_layer", "list[object]", "one record per layer"),
    ("comparison.aqi.delta", "list[number]", "AQI(b) - AQI(a) per layer"),
    ("comparison.aqi.max_abs_delta", "number", "largest |delta|"),
    ("comparison.subspace", "object", "MSO per layer on both checkpoints"),
    ("comparison.subspace.per_layer", "list[object]", "one record per layer"),
    *[(f"comparison.subspace.per_layer[].{k}", t, d) for k, t, d in _PAIR],
    ("comparison.subspace.delta", "list[number]", "MSO(b) - MSO(a) per layer"),
    ("comparison.subspace.max_abs_delta", "number", "largest |delta|"),
    ("comparison.probes", "object", "primary-method held-out AUROC, each checkpoint's own probes"),
    ("comparison.probes.per_layer", "list[object]", "one record per layer"),
    *[(f"comparison.probes.per_layer[].{k}", t, d) for k, t, d in _PAIR],
    ("comparison.probes.delta", "list[number]", "AUROC(b) - AUROC(a) per layer"),
    ("comparison.probes.max_abs_delta", "number", "largest |delta|"),
    ("comparison.steering", "object", "refusal on both checkpoints at the steering hook"),
    ("comparison.steering.hook", "string", "hook"),
    ("comparison.steering.baseline_a", "number", "unsteered refusal log-odds on a"),
    ("comparison.steering.baseline_b", "number", "unsteered refusal log-odds on b"),
    ("comparison.steering.baseline_delta", "number", "b - a"),
    ("comparison.steering.refusal_b", "list[number]", "b's own direction on b: refusal per multiplier"),
    ("comparison.steering.kl_b", "list[number]", "its KL per multiplier"),
    ("comparison.transfer", "object", "do a's probes and directions still work on b?"),
    ("comparison.transfer.probes", "object", "a's probes scored on b's activations of a's held-out rows"),
    ("comparison.transfer.probes.per_layer", "list[object]", "one record per layer (primary method)"),
    ("comparison.transfer.probes.per_layer[].layer", "integer", "block index"),
    ("comparison.transfer.probes.per_layer[].hook", "string", "hook name"),
    ("comparison.transfer.probes.per_layer[].auroc_a", "number", "a's probe on a (held-out)"),
    ("comparison.transfer.probes.per_layer[].auroc", "number", "a's probe on b (same rows)"),
    ("comparison.transfer.probes.per_layer[].recall_at_fpr", "number", "on b, threshold from b's control scores"),
    ("comparison.transfer.probes.per_layer[].delta", "number", "auroc - auroc_a"),
    ("comparison.transfer.probes.auroc", "list[number]", "a's probes on b per layer"),
    ("comparison.transfer.probes.delta", "list[number]", "change against a per layer"),
    ("comparison.transfer.directions", "object", "harmful-harmless mean-difference directions of a and b"),
    ("comparison.transfer.directions.per_layer", "list[object]", "one record per layer"),
    ("comparison.transfer.directions.per_layer[].layer", "integer", "block index"),
    ("comparison.transfer.directions.per_layer[].hook", "string", "hook name"),
    ("comparison.transfer.directions.per_layer[].cosine", "number", "cosine between the two directions"),
    ("comparison.transfer.directions.cosine", "list[number]", "per layer"),
    ("comparison.transfer.steering", "object", "a's steering vector applied to b at the steering hook"),
    ("comparison.transfer.steering.hook", "string", "hook"),
    ("comparison.transfer.steering.baseline", "number", "b unsteered"),
    ("comparison.transfer.steering.multipliers", "list[number]", "multipliers"),
    ("comparison.transfer.steering.refusal", "list[number]", "refusal log-odds on b per multiplier"),
    ("comparison.transfer.steering.refusal_delta", "list[number]", "minus b's baseline"),
    ("comparison.transfer.steering.kl", "list[number]", "KL on b's harmless prompts per multiplier"),
    ("comparison.weights", "object", "weight-space update U = W_b - W_a, per 2-D matrix (embeddings skipped)"),
    ("comparison.weights.n_matrices", "integer", "matrices compared"),
    ("comparison.weights.n_changed", "integer", "matrices with U != 0"),
    ("comparison.weights.relative_update_norm", "number", "||U||_F / ||W_a||_F over all compared matrices"),
    ("comparison.weights.energy", "number", "energy fraction of the bases"),
    ("comparison.weights.per_layer", "list[object]", "one record per block"),
    ("comparison.weights.per_layer[].layer", "integer", "block index"),
    ("comparison.weights.per_layer[].n_changed", "integer", "changed matrices"),
    ("comparison.weights.per_layer[].relative_update_norm", "number", "||U|| / ||W_a|| over the block"),
    ("comparison.weights.per_layer[].mso_mean", "number", "mean MSO of U's and W_a's top left subspaces (changed matrices)"),
    ("comparison.weights.per_layer[].baseline_mean", "number", "mean random baseline of those"),
    ("comparison.weights.per_layer[].update_in_weight_subspace", "number", "share of ||U||^2 inside W_a's top subspace"),
    ("comparison.weights.per_layer[].update_along_direction", "number|null", "share of the residual-writing updates' ||U||^2 along a's harmful-harmless direction at this layer (baseline 1/d)"),
    ("comparison.weights.update_along_direction", "list[number]", "per audited layer"),
    ("comparison.weights.direction_baseline", "number", "1 / d_model"),
]

AGGREGATIONS = ("max", "min", "mean", "median", "sum", "count", "first", "last")


@dataclass(frozen=True)
class Field:
    path: str
    type: str
    doc: str

    @property
    def is_list(self) -> bool:
        return self.type.startswith("list[")

    @property
    def nullable(self) -> bool:
        return self.type.endswith("|null")


FIELD_MAP: dict[str, Field] = {p: Field(p, t, d) for p, t, d in FIELDS}


def children(path: str) -> list[str]:
    """Names directly under ``path`` (``path[]`` for list items)."""
    prefix = path + "." if path else ""
    out = []
    for p in FIELD_MAP:
        if p.startswith(prefix):
            name = p[len(prefix):].split(".")[0]
            if name not in out:
                out.append(name)
    return out


_PYTYPES: dict[str, tuple[type, ...]] = {
    "number": (int, float),
    "integer": (int,),
    "string": (str,),
    "bool": (bool,),
    "object": (dict,),
}


def _type_ok(value: Any, kind: str) -> bool:
    options = kind.split("|")
    if value is None:
        # numbers may be null (NaN/inf are written as null); so may anything marked |null
        return "null" in options or any(o in ("number", "list[number]") for o in options)
    for option in options:
        if option.startswith("list["):
            if isinstance(value, list) and all(_type_ok(v, option[5:-1]) for v in value):
                return True
        elif option in _PYTYPES:
            if isinstance(value, bool) and option not in ("bool",):
                continue
            if isinstance(value, _PYTYPES[option]):
                return True
    return False


def validate_metrics(metrics: dict[str, Any]) -> list[str]:
    """Problems with ``metrics`` against the schema (empty when it conforms).

    Checks that every documented field of each present object is there with the right type,
    and that no undocumented field appears.
    """
    problems: list[str] = []
    if metrics.get("schema") != SCHEMA_NAME:
        problems.append(f"schema is {metrics.get('schema')!r}, expected {SCHEMA_NAME!r}")
    if metrics.get("schema_version") != SCHEMA_VERSION:
        problems.append(f"schema_version is {metrics.get('schema_version')!r}, expected {SCHEMA_VERSION}")

    def walk(value: Any, path: str, norm: str) -> None:
        if isinstance(value, dict):
            if norm == "timings_s":
                return  # free-form stage names
            for key, child in value.items():
                child_path = f"{path}.{key}" if path else key
                child_norm = f"{norm}.{key}" if norm else key
                if norm == "settings.datasets":
                    child_norm = "settings.datasets.*"
                field = FIELD_MAP.get(child_norm)
                if field is None:
                    problems.append(f"undocumented field {child_path}")
                    continue
                if not _type_ok(child, field.type):
                    problems.append(f"{child_path}: {type(child).__name__} is not {field.type}")
                    continue
                walk(child, child_path, child_norm)
            for name in children(norm):
                if not name.endswith("[]") and name != "*" and name not in value:
                    problems.append(f"missing field {path + '.' if path else ''}{name}")
        elif isinstance(value, list) and any(p.startswith(norm + "[].") for p in FIELD_MAP):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    walk(item, f"{path}[{i}]", norm + "[]")

    walk(metrics, "", "")
    return problems


def schema_markdown() -> str:
    """The field table of ``docs/audit.md``."""
    lines = ["| field | type | meaning |", "|---|---|---|"]
    for path, kind, doc in FIELDS:
        lines.append(f"| `{path}` | {kind} | {doc} |")
    return "\n".join(lines)


def check_schema_header(metrics: dict[str, Any], where: str = "metrics") -> None:
    """Refuse a file that is not an audit of a version this geomprobe reads."""
    if not isinstance(metrics, dict) or metrics.get("schema") != SCHEMA_NAME:
        raise GeomprobeError(f"{where} is not a geomprobe audit metrics file (no schema {SCHEMA_NAME!r})")
    version = metrics.get("schema_version")
    if version != SCHEMA_VERSION:
        raise GeomprobeError(
            f"{where} has schema_version {version!r}; this geomprobe reads version {SCHEMA_VERSION} (re-run geomprobe audit)"
        )
