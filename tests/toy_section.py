"""A whole audit section in one file: the mean residual-stream norm per audited layer.

docs/architecture.md ("Adding an audit section") shows this file; tests/test_audit.py
registers it (``register_section(NormsSection())``) and checks it end to end against a
brute-force reference: CLI output, metrics.json, the schema, the report, and ``--against``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from geomprobe.audit.context import AuditContext
from geomprobe.audit.sections.base import AuditSection
from geomprobe.audit.sections.paired import Paired, paired
from geomprobe.audit.spec import doc, size
from geomprobe.audit.tables import ReportBlock, Table, fmt


@dataclass(frozen=True)
class NormsSizes:
    max_rows: int | None = size(None, 16, doc="harmful-harmless rows averaged, the first ones (None: all)")


@dataclass
class NormsSettings:
    pooling: str = doc("pooling read")
    max_rows: int | None = doc("rows averaged at most (null: all)")


@dataclass
class NormLayer:
    layer: int = doc("block index")
    hook: str = doc("hook name")
    norm: float | None = doc("mean L2 norm of the rows' activations")


@dataclass
class NormsResult:
    per_layer: list[NormLayer] = doc("one record per audited layer")
    max: float | None = doc("largest mean norm over layers")
    n_rows: int = doc("rows averaged")


class NormsSection(AuditSection):
    name = "norms"
    title = "Residual-stream norms"
    description = "mean L2 norm of the last-token residual stream on the harmful-harmless set"
    Sizes = NormsSizes
    result_type = NormsResult
    settings_key = "norms"
    settings_type = NormsSettings
    settings_doc = "residual-norm settings"
    comparison_type = Paired
    comparison_doc = "mean norm per layer on both checkpoints"
    comparison_label = "norm"

    def run(self, ctx: AuditContext) -> NormsResult:
        from geomprobe.activations.store import open_cache

        rows = slice(ctx.sizes.norms.max_rows)
        with open_cache(ctx.caches["harmful_harmless"]) as cache:
            acts = {hook: cache.read(hook, "last")[rows].astype(np.float64) for hook in ctx.hooks}
        per_layer = [
            NormLayer(layer, hook, float(np.linalg.norm(acts[hook], axis=1).mean())) for layer, hook in zip(ctx.layers, ctx.hooks)
        ]
        return NormsResult(per_layer, max(r.norm for r in per_layer if r.norm is not None), len(acts[ctx.hooks[0]]))

    def settings(self, ctx: AuditContext) -> NormsSettings:
        return NormsSettings("last", ctx.sizes.norms.max_rows)

    def compare(self, a: NormsResult, b: NormsResult) -> Paired:
        return paired(a.per_layer, b.per_layer, "norm")

    def summary_line(self, metrics: dict[str, Any]) -> str:
        line = f"max mean residual norm {fmt(metrics['norms']['max'])}"
        compared = (metrics.get("comparison") or {}).get("norms")
        return line + (f" (largest |change| against b {fmt(compared['max_abs_delta'])})" if compared else "")

    def report(self, metrics: dict[str, Any]) -> ReportBlock:
        rows = [[fmt(r["layer"]), fmt(r["norm"])] for r in metrics["norms"]["per_layer"]]
        return ReportBlock(self.name, self.title, tables=[Table("Mean norm per layer", ["layer", "norm"], rows)])
