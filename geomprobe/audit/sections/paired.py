"""One per-layer number on both checkpoints, and b - a: what most sections' ``compare`` returns."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from geomprobe.audit.spec import doc


@dataclass
class PairedLayer:
    layer: int = doc("block index")
    hook: str = doc("TransformerLens hook name")
    a: float | None = doc("value on the audited checkpoint (`--model`)")
    b: float | None = doc("value on the second checkpoint (`--against`)")
    delta: float | None = doc("b - a")


@dataclass
class Paired:
    """One metric per layer on both checkpoints."""

    per_layer: list[PairedLayer] = doc("one record per layer")
    delta: list[float | None] = doc("b - a per layer")
    max_abs_delta: float | None = doc("largest |delta|")


def paired(a_recs: Sequence[Any], b_recs: Sequence[Any], key: str | Callable[[Any], float | None]) -> Paired:
    """``key`` (an attribute name, or a function of one record) of matching per-layer records (dataclasses with
    ``layer`` and ``hook``) of a and b, with b - a."""
    value = (lambda rec: getattr(rec, key)) if isinstance(key, str) else key
    per_layer = []
    for ra, rb in zip(a_recs, b_recs):
        va, vb = value(ra), value(rb)
        per_layer.append(PairedLayer(ra.layer, ra.hook, va, vb, None if va is None or vb is None else vb - va))
    deltas = [r.delta for r in per_layer]
    finite_deltas = [abs(d) for d in deltas if d is not None]
    return Paired(per_layer, deltas, max(finite_deltas) if finite_deltas else None)
