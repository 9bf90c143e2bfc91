"""Transfer between two checkpoints: do a's probes and directions still work on b?

a's probes scored on b's activations of a's held-out rows (threshold from b's control scores),
and the cosine between a's and b's harmful - harmless mean-difference directions per layer.
Used by the comparison section (these only make sense for a pair of checkpoints).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geomprobe.audit.context import AuditContext, finite
from geomprobe.audit.spec import doc


@dataclass
class TransferredProbeLayer:
    layer: int = doc("block index")
    hook: str = doc("hook name")
    auroc_a: float | None = doc("a's probe on a (held-out)")
    auroc: float | None = doc("a's probe on b (same rows)")
    recall_at_fpr: float | None = doc("on b, threshold from b's control scores")
    delta: float | None = doc("auroc - auroc_a")


@dataclass
class TransferredProbes:
    per_layer: list[TransferredProbeLayer] = doc("one record per layer (primary method)")
    auroc: list[float | None] = doc("a's probes on b per layer")
    delta: list[float | None] = doc("change against a per layer")


@dataclass
class DirectionLayer:
    layer: int = doc("block index")
    hook: str = doc("hook name")
    cosine: float | None = doc("cosine between the two directions")


@dataclass
class Directions:
    per_layer: list[DirectionLayer] = doc("one record per layer")
    cosine: list[float | None] = doc("per layer")


@dataclass
class TransferredSteering:
    hook: str = doc("hook")
    baseline: float | None = doc("b unsteered")
    multipliers: list[float] = doc("multipliers")
    refusal: list[float | None] = doc("refusal log-odds on b per multiplier")
    refusal_delta: list[float | None] = doc("minus b's baseline")
    kl: list[float | None] = doc("KL on b's harmless prompts per multiplier")


@dataclass
class Transfer:
    probes: TransferredProbes = doc("a's probes scored on b's activations of a's held-out rows")
    directions: Directions = doc("harmful-harmless mean-difference directions of a and b")
    steering: TransferredSteering = doc("a's steering vector applied to b at the steering hook")


def mean_diff_directions(cache: Path, hooks: list[str]) -> dict[str, np.ndarray]:
    """hook -> class-1 mean minus class-0 mean (``last`` pooling, float64)."""
    from geomprobe.activations.store import open_cache

    out = {}
    with open_cache(cache) as handle:
        labels = handle.labels
        for hook in hooks:
            X = handle.read(hook, "last").astype(np.float64)
            out[hook] = X[labels == 1].mean(0) - X[labels == 0].mean(0)
    return out


def transfer_probes(trained_a: Any, honesty_b: Path, control_b: Path, hooks: list[str], fpr: float) -> TransferredProbes:
    """a's probes on b's activations of a's held-out rows; threshold from b's control scores."""
    from geomprobe.activations.store import open_cache
    from geomprobe.core.hooks import hook_layer
    from geomprobe.probes import score_control
    from geomprobe.probes.pipeline import layer_records, read_layers

    probes, result_a = trained_a
    test_rows = np.asarray(probes.meta["split"]["test_rows"], dtype=np.int64)
    with open_cache(honesty_b) as handle:
        pos = list(handle.label_names).index(probes.positive_label)
        y = (handle.labels[test_rows] == pos).astype(np.int64)
        X = read_layers(handle, hooks, probes.pooling, rows=test_rows)
    scores = np.stack([probes.decision_function(h, X[i]) for i, h in enumerate(hooks)])
    control = score_control(probes, control_b)
    records = layer_records(
        hooks, scores, y, pooling=probes.pooling, method=probes.method, control=np.stack([control[h] for h in hooks]), fpr=fpr
    )
    own = {r["hook"]: r["auroc"] for r in result_a.records}
    per_layer = []
    for r in records:
        a_val, b_val = finite(own.get(r["hook"])), finite(r["auroc"])
        per_layer.append(
            TransferredProbeLayer(
                hook_layer(r["hook"]),
                r["hook"],
                a_val,
                b_val,
                finite(r["recall_at_fpr"]),
                None if a_val is None or b_val is None else b_val - a_val,
            )
        )
    return TransferredProbes(per_layer, [r.auroc for r in per_layer], [r.delta for r in per_layer])


def direction_cosines(ctx: AuditContext) -> tuple[Directions, dict[str, np.ndarray]]:
    """Cosine of a's and b's harmful - harmless directions per layer, and a's directions."""
    assert ctx.against is not None
    dirs_a = mean_diff_directions(ctx.caches["harmful_harmless"], ctx.hooks)
    dirs_b = mean_diff_directions(ctx.against.caches["harmful_harmless"], ctx.hooks)
    per_layer = []
    for layer, hook in zip(ctx.layers, ctx.hooks):
        na, nb = np.linalg.norm(dirs_a[hook]), np.linalg.norm(dirs_b[hook])
        per_layer.append(
            DirectionLayer(layer, hook, float(dirs_a[hook] @ dirs_b[hook] / (na * nb)) if na > 0 and nb > 0 else None)
        )
    return Directions(per_layer, [r.cosine for r in per_layer]), dirs_a
