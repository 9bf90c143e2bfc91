"""What every audit section is handed: the sizes, the options, the progress clock and the shared context.

A section never reaches for globals: the model, the prompt sets, the audited layers, the cache
files, the output folder and the results of earlier sections all come in one
:class:`AuditContext`. With ``--against`` the context carries a twin for the second checkpoint
(``ctx.against``: same sets, layers and options, its own model and caches).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from geomprobe.audit.registry import FULL, QUICK, AuditSizes  # noqa: F401  (re-exported: the sizes live with the registry)
from geomprobe.audit.spec import internal  # noqa: F401  (re-exported for the sections)
from geomprobe.audit.tables import FigureRef
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.hooks import hook_name

HOOK_KIND = "resid_post"
ProgressFn = Callable[[str, str], None]


@dataclass(frozen=True)
class AuditOptions:
    """The run's switches that are not sizes: they go into ``settings`` of metrics.json."""

    seed: int = 0
    device: str = "auto"
    batch_size: int = 16
    quick: bool = False
    show_bars: bool = False  # per-batch progress bars while caching (only on a terminal)
    deception_set: str | None = None  # a deception-set JSONL to use instead of building one
    preferences: str | None = None  # a preference JSONL for the CHES section instead of the bundled set


class StageClock:
    """Reports each stage through ``progress`` and adds up its wall-clock seconds per stage name."""

    def __init__(self, progress: ProgressFn) -> None:
        self.progress = progress
        self.timings: dict[str, float] = {}

    def run(self, stage: str, message: str, work: Callable[[], Any]) -> Any:
        self.progress(stage, message + " ...")
        start = time.perf_counter()
        value = work()
        seconds = time.perf_counter() - start
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds
        self.progress(stage, f"done in {seconds:.1f} s")
        return value


def print_progress(stage: str, message: str) -> None:
    """The ``progress=True`` reporter: one line per stage event on stderr."""
    print(f"[audit] {stage:<10} {message}", file=sys.stderr, flush=True)


def resolve_progress(progress: ProgressFn | bool | None) -> ProgressFn:
    """``True`` prints to stderr, a callable is used as is, anything else is silent."""
    if progress is True:
        return print_progress
    if callable(progress):
        return progress
    return lambda stage, message: None


@dataclass
class AuditContext:
    """Everything a section reads; one per checkpoint (``against`` holds the second one's)."""

    model: Any  # a geomprobe.models.LoadedModel
    sets: dict[str, Any]  # role (harmful_harmless, honesty, control) -> PromptSet
    layers: list[int]
    sizes: AuditSizes
    options: AuditOptions
    out_dir: Path
    clock: StageClock
    cache_dir: Path  # where this checkpoint's cache files go
    role: str = "model"  # "model" (checkpoint a) or "against" (checkpoint b)
    against: AuditContext | None = field(default=None, repr=False)  # on a: the second checkpoint's context
    # on b: the audited checkpoint's context (each section runs on a first, so b can read a's result)
    audited: AuditContext | None = field(default=None, repr=False, compare=False)
    # Filled as the audit goes: the cache section writes ``caches``; run_audit stores each
    # section's result under its name in ``results`` (on both checkpoints' contexts).
    caches: dict[str, Path] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def hooks(self) -> list[str]:
        return [hook_at(layer) for layer in self.layers]

    @property
    def is_against(self) -> bool:
        return self.role == "against"

    @property
    def short_model_id(self) -> str:
        """The model id for plot titles, cut from the left to 40 characters."""
        model_id = str(self.model.model_id)
        return model_id if len(model_id) <= 40 else "…" + model_id[-39:]

    def save_figure(self, key: str, section: str, title: str, figure: Any, caption: str = "") -> FigureRef:
        """Save ``figure`` as ``OUT/{key}.png`` and return its report entry."""
        from geomprobe.plots import save_figure  # matplotlib loads only when plots are drawn

        return FigureRef(key, section, title, save_figure(figure, self.out_dir / f"{key}.png"), caption)


def hook_at(layer: int) -> str:
    """The audited hook of block ``layer`` (``blocks.{layer}.hook_resid_post``)."""
    return hook_name(layer, HOOK_KIND)


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


def finite(value: Any) -> float | None:
    """A metric as metrics.json stores it: a float, or None for a missing, NaN or infinite value."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def as_metrics(value: Any) -> Any:
    """``value`` as metrics.json stores it: result dataclasses become dicts (fields in declaration
    order, internal fields left out), lists and dicts are converted item by item."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: as_metrics(getattr(value, f.name)) for f in fields(value) if not f.metadata.get("internal")}
    if isinstance(value, dict):
        return {k: as_metrics(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [as_metrics(v) for v in value]
    return value
