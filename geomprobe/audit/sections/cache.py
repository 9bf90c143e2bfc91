"""Cache section: the bundled contrast sets cached at every audited layer, for every later section.

Writes ``OUT/caches/{set}.h5`` (``OUT/caches/against/`` for the second checkpoint) with ``last``
and ``mean`` pooling of ``resid_post``; records the sets under ``settings.datasets``. Its sizes
decide the prompt subsets and the layer stride of the whole audit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from geomprobe.audit.context import AuditContext
from geomprobe.audit.sections.base import AuditSection
from geomprobe.audit.spec import doc, size
from geomprobe.core.errors import GeomprobeError

ROLES = ("harmful_harmless", "honesty", "control")


@dataclass(frozen=True)
class CacheSizes:
    limit_harmful_harmless: int | None = size(None, 48, doc="harmful-harmless prompts (stratified subset; None: all)")
    limit_honesty: int | None = size(None, 48, doc="honesty prompts (pairs kept; None: all)")
    limit_control: int | None = size(None, 48, doc="control prompts (None: all)")
    layer_stride: int = size(1, 3, doc="audit every n-th layer (the last layer is always included)")

    def __post_init__(self) -> None:
        if self.layer_stride < 1:
            raise GeomprobeError(f"layer stride must be at least 1, got {self.layer_stride}")

    def limit(self, role: str) -> int | None:
        """The stratified subset size of the prompt set playing ``role`` (None: all rows)."""
        return {"harmful_harmless": self.limit_harmful_harmless, "honesty": self.limit_honesty, "control": self.limit_control}[
            role
        ]


@dataclass
class DatasetSettings:
    name: str = doc("bundled set name or file stem")
    sha256: str = doc("SHA-256 of the set's file")
    n_prompts: int = doc("prompts cached (after `limit`)")
    limit: int | None = doc("stratified subset size asked for (null: all rows)")
    label_names: list[str] = doc("label index order of the cache")
    cache: str = doc("cache file, relative to the output folder")


@dataclass
class CacheResult:
    """The cache file of each prompt set (role -> path) of one checkpoint."""

    paths: dict[str, Path]


def cache_sets(ctx: AuditContext) -> dict[str, Path]:
    """Cache every prompt set of ``ctx`` on its model into ``ctx.cache_dir``; return role -> file."""
    from geomprobe.activations.collect import cache_activations

    ctx.cache_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, prompts in ctx.sets.items():
        path = ctx.cache_dir / f"{prompts.name}.h5"
        cache_activations(
            ctx.model,
            prompts,
            path,
            hooks=ctx.hooks,
            poolings=("last", "mean"),
            batch_size=ctx.options.batch_size,
            overwrite=True,
            progress=ctx.options.show_bars,
        )
        paths[role] = path
    return paths


class CacheSection(AuditSection):
    name = "cache"
    Sizes = CacheSizes
    settings_key = "datasets"
    settings_type = dict[str, DatasetSettings]
    settings_doc = "the prompt sets, keyed `harmful_harmless`, `honesty`, `control`"
    settings_items = ("one prompt set",)

    def run(self, ctx: AuditContext) -> CacheResult:
        n_prompts = sum(len(s) for s in ctx.sets.values())
        message = (
            "caching the same sets on the --against model"
            if ctx.is_against
            else f"caching {', '.join(s.name for s in ctx.sets.values())} ({n_prompts} prompts, {len(ctx.hooks)} layers)"
        )
        ctx.caches.update(ctx.clock.run("cache", message, lambda: cache_sets(ctx)))
        return CacheResult(dict(ctx.caches))

    def settings(self, ctx: AuditContext) -> dict[str, DatasetSettings]:
        sizes = ctx.sizes.cache
        return {
            role: DatasetSettings(
                s.name, s.sha256, len(s), sizes.limit(role), list(s.label_names), str(ctx.caches[role].relative_to(ctx.out_dir))
            )
            for role, s in ctx.sets.items()
        }
