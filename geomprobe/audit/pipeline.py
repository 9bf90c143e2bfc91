"""``run_audit``: load the checkpoint(s), run every section in registry order, write the outputs.

The work itself lives in the registered sections (:mod:`geomprobe.audit.sections`: cache, AQI,
subspace, probes, steering, CHES, and with ``against`` the comparison, the paired deltas and the
alignment depth); this
module checks the request before any work, builds the shared
:class:`~geomprobe.audit.context.AuditContext`, runs every section (on both checkpoints with
``against``: first on a, then on b, whose context can read a's result), assembles
``metrics.json`` from their results, then draws the plots and writes the report.
"""

from __future__ import annotations

import datetime as _dt
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomprobe.audit.conditions import ConditionResult, evaluate_conditions, parse_conditions
from geomprobe.audit.context import (
    FULL,
    HOOK_KIND,
    QUICK,
    AuditContext,
    AuditOptions,
    AuditSizes,
    ProgressFn,
    StageClock,
    as_metrics,
    audited_layers,
    resolve_progress,
)
from geomprobe.audit.report import write_report
from geomprobe.audit.schema import SCHEMA_NAME, SCHEMA_VERSION, check_schema_header
from geomprobe.audit.sections import SECTIONS
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.io import Output, check_outputs, write_json

DATASETS = (("harmful_harmless", "harmful-harmless"), ("honesty", "honesty"), ("control", "control"))


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

    def summary(self) -> str:
        """Three lines: what was audited, each section's headline (``summary_line``), and the files written."""
        m = self.metrics
        headlines = [line for s in SECTIONS if m.get(s.name) is not None and (line := s.summary_line(m))]
        return "\n".join(
            [
                f"audited {m['model']['model_id']} ({len(m['settings']['layers'])} layers, {m['settings']['hook_kind']})"
                + (f" against {m['against']['model_id']}" if m.get("against") else ""),
                "; ".join(headlines),
                f"wrote {self.html_path}, {self.markdown_path}, {self.metrics_path}",
            ]
        )


def load_metrics(path: str | Path) -> dict[str, Any]:
    """Read an audit's metrics.json (a folder holding one works too) and check its schema version."""
    from geomprobe.core.validate import parse_json

    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise GeomprobeError(f"{path} does not exist; run geomprobe audit first")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GeomprobeError(f"{path} is not UTF-8 text; re-save it or rerun geomprobe audit") from None
    metrics = parse_json(text, str(path), "rerun geomprobe audit")
    check_schema_header(metrics, str(path))
    return metrics


def _load(model: Any, dtype: str, device: str, load: Callable[[Any], Any] | None) -> Any:
    from geomprobe.models import LoadedModel, load_model

    if isinstance(model, LoadedModel):
        return model
    return load(model) if load is not None else load_model(model, dtype=dtype, device=device)


def _shape(model: Any) -> tuple[str, int, int]:
    model_type = getattr(getattr(model.hf_model, "config", None), "model_type", "") or "unknown"
    return str(model_type), int(model.n_layers), int(model.d_model)


def _provenance(model: Any) -> dict[str, Any]:
    prov = dict(model.provenance())
    prov.update({"n_layers": int(model.n_layers), "d_model": int(model.d_model)})
    return prov


def _open_context(
    model: Any,
    against: Any,
    dtype: str,
    layers: Sequence[int] | None,
    sets: dict[str, Any],
    sizes: AuditSizes,
    options: AuditOptions,
    out_dir: Path,
    clock: StageClock,
    load: Callable[[Any], Any] | None,
) -> AuditContext:
    """Load the checkpoint(s) and refuse a second one of another architecture before any caching."""
    model_a = clock.run("load", f"loading {getattr(model, 'model_id', model)}", lambda: _load(model, dtype, options.device, load))
    model_b = None
    if against is not None:
        model_b = clock.run(
            "load",
            f"loading {getattr(against, 'model_id', against)} (--against)",
            lambda: _load(against, dtype, options.device, load),
        )
        (type_a, n_a, d_a), (type_b, n_b, d_b) = _shape(model_a), _shape(model_b)
        if (type_a, n_a, d_a) != (type_b, n_b, d_b):
            raise GeomprobeError(
                f"--against model is {type_b} with {n_b} layers x d_model {d_b}, the audited one {type_a} "
                f"with {n_a} x {d_a}; compare checkpoints of the same architecture"
            )
    chosen = audited_layers(model_a.n_layers, sizes.cache.layer_stride, layers)
    ctx = AuditContext(model_a, sets, chosen, sizes, options, out_dir, clock, cache_dir=out_dir / "caches")
    if model_b is not None:
        ctx.against = AuditContext(
            model_b,
            sets,
            chosen,
            sizes,
            options,
            out_dir,
            clock,
            cache_dir=out_dir / "caches" / "against",
            role="against",
            audited=ctx,
        )
    return ctx


def _collect_metrics(ctx: AuditContext) -> dict[str, Any]:
    """metrics.json from the context and the sections' results (timings are filled in when written)."""
    from geomprobe.core import __version__

    settings: dict[str, Any] = {
        "quick": bool(ctx.options.quick),
        "seed": int(ctx.options.seed),
        "hook_kind": HOOK_KIND,
        "hooks": ctx.hooks,
        "layers": ctx.layers,
        "batch_size": int(ctx.options.batch_size),
        "metric_dtype": "float64",
        "store_dtype": "float32",
    }
    settings.update({s.settings_key: s.settings_dict(ctx) for s in SECTIONS if s.settings_key})
    metrics: dict[str, Any] = {
        "schema": SCHEMA_NAME,
        "schema_version": SCHEMA_VERSION,
        "geomprobe_version": __version__,
        "created_utc": _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat(),
        "model": _provenance(ctx.model),
        "against": _provenance(ctx.against.model) if ctx.against else None,
        "settings": settings,
        "timings_s": {},
    }
    metrics.update({s.name: as_metrics(ctx.results[s.name]) for s in SECTIONS if s.writes_metrics})
    return metrics


AUDIT_FILES = ("metrics.json", "report.html", "report.md", "*.png", "caches")  # what an audit writes into --out


def _write_metrics(out_dir: Path, metrics: dict[str, Any], clock: StageClock) -> Path:
    metrics["timings_s"] = {k: round(v, 3) for k, v in clock.timings.items()}
    return write_json(out_dir / "metrics.json", metrics)


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
    deception_set: str | Path | None = None,
    preferences: str | Path | None = None,
    load: Callable[[Any], Any] | None = None,
) -> AuditResult:
    """Audit a checkpoint (and compare it with ``against``); write metrics.json, plots and reports.

    ``model``/``against``: ``"default"``, a folder, a ``.gguf`` file, a hub name or a loaded
    :class:`~geomprobe.models.LoadedModel`; ``load(reference)`` loads the references that are not
    loaded yet (default: ``load_model`` with ``dtype`` and ``device``). ``sizes`` (an
    :class:`AuditSizes`, one sizes dataclass per section) overrides :data:`FULL` (or :data:`QUICK`
    when ``quick``); ``layers`` picks block indices instead of the cache section's stride. ``fail_if``
    conditions are checked before any work and evaluated at the end (see ``result.gates``).
    ``progress``: ``True`` prints each stage to stderr, or pass ``fn(stage, message)``.
    ``deception_set``: a ``geomprobe probe deception-set`` JSONL file for the probe section's
    check on the model's own answers (default: built on the audited model at the size's count).
    ``preferences``: a JSONL file of ``{prompt, chosen, rejected}`` rows for the CHES section
    (default: the bundled ``preferences`` set); its rows are checked before the model loads.
    """
    from geomprobe.activations.datasets import load_prompt_set
    from geomprobe.ches import BUNDLED_PREFERENCES, load_preferences

    # Cheap checks first: a bad condition, size or folder must not cost a model load.
    conditions = parse_conditions(fail_if, against=against is not None)
    sizes = sizes or (QUICK if quick else FULL)  # each section's sizes check themselves when made
    if not isinstance(sizes, AuditSizes):
        raise GeomprobeError(f"sizes must be an AuditSizes (e.g. QUICK.replace(aqi={{...}})), got {type(sizes).__name__}")
    if batch_size < 1:
        raise GeomprobeError(f"--batch-size must be at least 1, got {batch_size}")
    if deception_set is not None and not Path(deception_set).is_file():
        raise GeomprobeError(
            f"--deception-set {str(deception_set)!r} is not a file; build one with geomprobe probe deception-set --out FILE.jsonl"
        )
    if preferences is not None:
        load_preferences(preferences)  # a bad file or row is one line here, not after the model loads
        if str(preferences) not in BUNDLED_PREFERENCES:
            preferences = Path(preferences).resolve()
    # metrics.json marks an audit folder; the other files an audit writes are refused too (a user's own report.html).
    check_outputs(
        [Output(out_dir, "--out", "folder", what="geomprobe audit", holds="metrics.json", owns=AUDIT_FILES)],
        inputs=[deception_set, preferences if isinstance(preferences, Path) else None],
        overwrite=overwrite,
    )
    out_dir = Path(out_dir)
    clock = StageClock(resolve_progress(progress))
    options = AuditOptions(
        seed=seed,
        device=device,
        batch_size=batch_size,
        quick=quick,
        show_bars=progress is True and sys.stderr.isatty(),
        deception_set=None if deception_set is None else str(Path(deception_set).resolve()),
        preferences=None if preferences is None else str(preferences),
    )
    sets = {role: load_prompt_set(name, limit=sizes.cache.limit(role), seed=seed) for role, name in DATASETS}
    ctx = _open_context(model, against, dtype, layers, sets, sizes, options, out_dir, clock, load)
    out_dir.mkdir(exist_ok=True)

    for section in list(SECTIONS):
        if section.needs_against:  # once, reading both checkpoints
            ctx.results[section.name] = section.run(ctx) if ctx.against is not None else None
            continue
        ctx.results[section.name] = section.run(ctx)
        if ctx.against is not None:  # the same section on b; comparison pairs the two through compare(a, b)
            ctx.against.results[section.name] = section.run(ctx.against)
    metrics = _collect_metrics(ctx)
    _write_metrics(out_dir, metrics, clock)  # on disk first: a failing plot must not lose the numbers

    drawn = [s for s in SECTIONS if ctx.results[s.name] is not None]
    figures = clock.run(
        "plots", "drawing plots", lambda: [f for s in drawn for f in s.figures(ctx, ctx.results[s.name], metrics)]
    )
    gates = evaluate_conditions(conditions, metrics)
    html_path, md_path = clock.run(
        "report", "writing report.html and report.md", lambda: write_report(metrics, figures, out_dir, gates)
    )
    metrics_path = _write_metrics(out_dir, metrics, clock)
    caches = dict(ctx.caches)
    if ctx.against is not None:
        caches.update({f"against_{k}": v for k, v in ctx.against.caches.items()})
    return AuditResult(metrics, out_dir, metrics_path, html_path, md_path, {f.key: f.path for f in figures}, caches, gates)
