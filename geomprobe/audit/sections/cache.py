"""Cache section: the bundled contrast sets cached at every audited layer, for every later section.

Writes ``OUT/caches/{set}.h5`` (``OUT/caches/against/`` for the second checkpoint) with ``last``
and ``mean`` pooling of ``resid_post``; records the sets under ``settings.datasets``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geomprobe.audit.context import AuditContext
from geomprobe.audit.sections.base import AuditSection

ROLES = ("harmful_harmless", "honesty", "control")


@dataclass
class CacheResult:
    """The cache file of each prompt set (role -> path), per checkpoint."""

    paths: dict[str, Path]
    against: dict[str, Path] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"paths": {k: str(v) for k, v in self.paths.items()},
                "against": None if self.against is None else {k: str(v) for k, v in self.against.items()}}


def cache_sets(ctx: AuditContext) -> dict[str, Path]:
    """Cache every prompt set of ``ctx`` on its model into ``ctx.cache_dir``; return role -> file."""
    from geomprobe.activations.collect import cache_activations

    ctx.cache_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, prompts in ctx.sets.items():
        path = ctx.cache_dir / f"{prompts.name}.h5"
        cache_activations(ctx.model, prompts, path, hooks=ctx.hooks, poolings=("last", "mean"),
                          batch_size=ctx.options.batch_size, overwrite=True, progress=ctx.options.show_bars)
        paths[role] = path
    return paths


class CacheSection(AuditSection):
    name = "cache"
    writes_metrics = False
    settings_key = "datasets"
    settings_fields = (
        ("settings.datasets", "object", "the prompt sets, keyed `harmful_harmless`, `honesty`, `control`"),
        ("settings.datasets.*", "object", "one prompt set"),
        ("settings.datasets.*.name", "string", "bundled set name or file stem"),
        ("settings.datasets.*.sha256", "string", "SHA-256 of the set's file"),
        ("settings.datasets.*.n_prompts", "integer", "prompts cached (after `limit`)"),
        ("settings.datasets.*.limit", "integer|null", "stratified subset size asked for (null: all rows)"),
        ("settings.datasets.*.label_names", "list[string]", "label index order of the cache"),
        ("settings.datasets.*.cache", "string", "cache file, relative to the output folder"),
    )

    def run(self, ctx: AuditContext) -> CacheResult:
        n_prompts = sum(len(s) for s in ctx.sets.values())
        ctx.caches.update(ctx.clock.run(
            "cache", f"caching {', '.join(s.name for s in ctx.sets.values())} ({n_prompts} prompts, {len(ctx.hooks)} layers)",
            lambda: cache_sets(ctx)))
        if ctx.against is None:
            return CacheResult(dict(ctx.caches))
        b = ctx.against
        b.caches.update(ctx.clock.run("cache", "caching the same sets on the --against model", lambda: cache_sets(b)))
        return CacheResult(dict(ctx.caches), dict(b.caches))

    def settings(self, ctx: AuditContext) -> dict[str, Any]:
        return {
            role: {"name": s.name, "sha256": s.sha256, "n_prompts": len(s), "limit": ctx.sizes.limit(role),
                   "label_names": list(s.label_names), "cache": str(ctx.caches[role].relative_to(ctx.out_dir))}
            for role, s in ctx.sets.items()
        }
