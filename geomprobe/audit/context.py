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

from geomprobe.audit.tables import FigureRef
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.hooks import hook_name

HOOK_KIND = "resid_post"
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
    probe_methods: tuple[str, ...] = ("logistic", "mean-diff", "lda", "pca-diff-uncentered")  # registered probe kinds
    probe_fpr: float = 0.01
    probe_test_size: float = 0.25
    steering_prompts: int = 16  # per class, held out from the vector
    # A mean-diff vector at multiplier 1 adds one whole class-mean difference.
    multipliers: tuple[float, ...] = (-2.0, -1.0, -0.5, 0.5, 1.0, 2.0)
    kl_limit: float = 0.1
    max_layer_fraction: float = 0.8
    judge_tokens: int = 24  # greedy tokens the behaviour judge reads (refusals show in the first few)
    judge_candidates: int = 3  # layers judged by generation after the ablation screen
    screen_layers: int = 8  # candidate layers screened (evenly spaced); each costs a pass over the held-out prompts
    judge_bootstrap: int = 1000
    deception_questions: int = 40  # per instruction; 0 skips the deception check unless a set is given
    deception_tokens: int = 24
    pca_panels: int = 8
    token_prompts: int = 4

    def __post_init__(self) -> None:
        # Any registered probe kind (geomprobe.probes.register_probe_kind), by its current name;
        # an unknown one is refused here, before any model is loaded.
        from geomprobe.probes import canonical_method

        object.__setattr__(self, "probe_methods", tuple(canonical_method(m, depth=3) for m in self.probe_methods))

    def limit(self, role: str) -> int | None:
        """The stratified subset size of the prompt set playing ``role`` (None: all rows)."""
        return {"harmful_harmless": self.limit_harmful_harmless, "honesty": self.limit_honesty,
                "control": self.limit_control}[role]


FULL = AuditSizes()
QUICK = AuditSizes(
    limit_harmful_harmless=48, limit_honesty=48, limit_control=48, layer_stride=3, n_bootstrap=50, n_permutations=50,
    n_draws=20, probe_methods=("logistic", "mean-diff", "pca-diff-uncentered"), steering_prompts=8,
    multipliers=(-2.0, -1.0, 1.0, 2.0), pca_panels=4, token_prompts=2, judge_tokens=12, judge_candidates=2, screen_layers=4,
    judge_bootstrap=500, deception_questions=16, deception_tokens=16,
)


@dataclass(frozen=True)
class AuditOptions:
    """The run's switches that are not sizes: they go into ``settings`` of metrics.json."""

    seed: int = 0
    device: str = "auto"
    batch_size: int = 16
    quick: bool = False
    show_bars: bool = False  # per-batch progress bars while caching (only on a terminal)
    deception_set: str | None = None  # a deception-set JSONL to use instead of building one


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
    against: AuditContext | None = None
    # Filled as the audit goes: the cache section writes ``caches``; run_audit stores each
    # section's result under its name in ``results`` (only on the audited checkpoint's context).
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


def internal(default: Any = None) -> Any:
    """A result field kept for later sections and plots but not written to metrics.json."""
    return field(default=default, repr=False, compare=False, metadata={"internal": True})


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
