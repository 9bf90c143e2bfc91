"""The weight-space part of the comparison: where the update ``U = W_b - W_a`` between two checkpoints lies.

Per 2-D matrix of a (embeddings and LM head skipped): the overlap of U's top left singular
subspace with W_a's (``geomprobe.subspace.weight_update_overlap`` with two checkpoints), and for
the matrices that write the residual stream, U's energy along a's harmful - harmless direction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from geomprobe.audit.context import as_metrics, hook_at
from geomprobe.audit.spec import doc


@dataclass
class WeightLayer:
    layer: int = doc("block index")
    n_changed: int = doc("changed matrices")
    relative_update_norm: float | None = doc("||U|| / ||W_a|| over the block")
    mso_mean: float | None = doc("mean MSO of U's and W_a's top left subspaces (changed matrices)")
    baseline_mean: float | None = doc("mean random baseline of those")
    update_in_weight_subspace: float | None = doc("share of ||U||^2 inside W_a's top subspace")
    update_along_direction: float | None = doc(
        "share of the residual-writing updates' ||U||^2 along a's harmful-harmless direction at this layer (baseline 1/d)",
        type="number|null",
    )


@dataclass
class WeightUpdate:
    """metrics.json ``comparison.weights``."""

    n_matrices: int = doc("matrices compared")
    n_changed: int = doc("matrices with U != 0")
    relative_update_norm: float | None = doc("||U||_F / ||W_a||_F over all compared matrices")
    energy: float = doc("energy fraction of the bases")
    per_layer: list[WeightLayer] = doc("one record per block")
    update_along_direction: list[float | None] = doc("per audited layer")
    direction_baseline: float = doc("1 / d_model")

    def to_dict(self) -> dict[str, Any]:
        return as_metrics(self)


def weight_update(
    model_a: Any, model_b: Any, directions: Mapping[str, np.ndarray], layers: list[int], *, energy: float, device: str
) -> WeightUpdate:
    """Where ``W_b - W_a`` lies, per matrix and per block; ``directions``: hook -> a's direction there."""
    import torch

    from geomprobe.models import resolve_device
    from geomprobe.models.architecture import RESIDUAL_WRITER_NAMES  # the one architecture table
    from geomprobe.subspace import weight_matrices, weight_update_overlap

    dev = resolve_device(device)
    overlaps = weight_update_overlap(model_a, model_b, energy=energy, device=str(dev))
    transposed = {m.name: m.transposed for m in weight_matrices(model_a.hf_model)}

    def state(model: Any) -> dict[str, torch.Tensor]:
        return {k.replace("._original_component", ""): v for k, v in model.hf_model.state_dict().items()}

    sa, sb = state(model_a), state(model_b)
    d = int(model_a.d_model)
    per_matrix: list[dict[str, Any]] = []
    for o in overlaps:
        ok = o.status == "ok"
        rec = {
            "layer": o.layer,
            "module": o.module,
            "norm_u": o.norm_a,
            "norm_w": o.norm_b,
            "mso": o.mso if ok else None,
            "baseline": o.baseline if ok else None,
            "inside": o.energy_a_in_b if ok else None,
            "along": None,
        }
        hook = hook_at(o.layer) if o.layer >= 0 else ""
        if ok and hook in directions and o.module in RESIDUAL_WRITER_NAMES and o.shape[0] == d:
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
        per_layer.append(
            WeightLayer(
                layer=layer,
                n_changed=len(changed),
                relative_update_norm=math.sqrt(weight) / base if base > 0 else None,
                mso_mean=float(np.mean([r["mso"] for r in changed])) if changed else None,
                baseline_mean=float(np.mean([r["baseline"] for r in changed])) if changed else None,
                update_in_weight_subspace=sum(r["inside"] * r["norm_u"] ** 2 for r in changed) / weight if weight > 0 else None,
                update_along_direction=sum(r["along"] * r["norm_u"] ** 2 for r in writers) / writer_energy
                if writer_energy > 0
                else None,
            )
        )
    total_u = math.sqrt(sum(r["norm_u"] ** 2 for r in per_matrix))
    total_w = math.sqrt(sum(r["norm_w"] ** 2 for r in per_matrix))
    audited = {r.layer: r for r in per_layer}
    return WeightUpdate(
        n_matrices=len(per_matrix),
        n_changed=int(sum(r["norm_u"] > 0 for r in per_matrix)),
        relative_update_norm=total_u / total_w if total_w > 0 else None,
        energy=energy,
        per_layer=per_layer,
        update_along_direction=[audited[layer].update_along_direction if layer in audited else None for layer in layers],
        direction_baseline=1.0 / d,
    )
