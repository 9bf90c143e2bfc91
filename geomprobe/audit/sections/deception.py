"""The probe section's deception check: the honesty probe scored on the model's own true and false answers.

The bundled honesty set differs only in the instruction, so its AUROC can measure sensitivity to
the instruction rather than to falsehood. Here the audited model answers short questions under a
neutral and a lie-pressure instruction (:func:`geomprobe.probes.deception.build_deception_set`, or
a set passed as ``--deception-set``), the answers are graded true/false against the known answer,
and the primary honesty probe is scored on them: the pooled AUROC, and the AUROC within each
instruction condition (true vs false answers under the same instruction), with bootstrap
intervals and counts. A condition without both grades is reported as not computable with its
counts; the audit never fails for it. The recall threshold comes from the bundled control set.

The headline (:class:`DeceptionHeadline`) is read at one layer chosen before these answers are
scored: the primary probe's best layer on the honesty set's held-out split, rows disjoint from the
answers. The best layer on the answers themselves is a maximum over layers on the reported rows and
is only shown labelled as one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geomprobe.audit.context import AuditContext, finite
from geomprobe.audit.spec import doc
from geomprobe.audit.tables import Table, fmt
from geomprobe.core.errors import GeomprobeError


@dataclass
class ConditionAuroc:
    layer: int = doc("block index")
    hook: str = doc("hook")
    condition: str = doc("`pooled` or the instruction condition")
    n_positive: int = doc("false (deceptive) answers")
    n_negative: int = doc("true answers")
    computable: bool = doc("both grades present")
    auroc: float | None = doc("AUROC of deceptive vs true answers", type="number|null")
    auroc_ci_low: float | None = doc("bootstrap interval, low", type="number|null")
    auroc_ci_high: float | None = doc("high", type="number|null")
    recall_at_fpr: float | None = doc("recall of false answers at the control threshold", type="number|null")


@dataclass
class DeceptionCheck:
    """metrics.json ``probes.deception``."""

    source: str = doc("`built` (by the audit on the audited model) or the `--deception-set` file")
    status: str = doc("`computed`, or `not computable: ...` with the reason")
    method: str = doc("probe type scored (the primary method)")
    threshold_source: str = doc("`control`: recall threshold from the bundled control set")
    n_questions: int | None = doc("questions asked under each instruction (built sets)")
    max_new_tokens: int | None = doc("tokens generated per answer (built sets)")
    counts: dict[str, dict[str, int]] = doc(
        "answers per instruction condition and grade (built sets: unclear included)",
        items=("one condition: `{grade: answers}`", "answers of that grade"),
    )
    computable: list[str] = doc("conditions with both true and false answers")
    per_condition: list[ConditionAuroc] = doc("per layer: `pooled` and each condition")
    headline: DeceptionHeadline | None = doc(
        "the reported numbers, at the layer chosen on the honesty held-out split (null when not computable)", default=None
    )


HONESTY_SPLIT = "honesty held-out split"


@dataclass
class DeceptionHeadline:
    """metrics.json ``probes.deception.headline``: the check read at a layer chosen on other rows."""

    layer: int = doc("block index: the primary probe's highest held-out AUROC on the bundled honesty set")
    hook: str = doc("hook")
    chosen_on: str = doc("`honesty held-out split` (rows disjoint from the model's answers)")
    pooled_auroc: float | None = doc("pooled AUROC of false vs true answers at this layer", type="number|null")
    pooled_ci_low: float | None = doc("its bootstrap interval, low", type="number|null")
    pooled_ci_high: float | None = doc("high", type="number|null")
    per_condition: list[ConditionAuroc] = doc("`pooled` and each condition at this layer")
    n_layers: int = doc("layers scored (the number of layers a maximum over layers would be taken over)")


def deception_headline(per_condition: list[ConditionAuroc], layer: int, hook: str) -> DeceptionHeadline | None:
    """The rows of ``per_condition`` at ``layer`` (chosen on the honesty held-out split); None if absent."""
    rows = [r for r in per_condition if r.layer == layer]
    pooled = next((r for r in rows if r.condition == "pooled"), None)
    if pooled is None:
        return None
    return DeceptionHeadline(
        layer,
        hook,
        HONESTY_SPLIT,
        pooled.auroc,
        pooled.auroc_ci_low,
        pooled.auroc_ci_high,
        rows,
        len({r.layer for r in per_condition}),
    )


def deception_counts(path: Path) -> dict[str, dict[str, int]]:
    """``{condition: {grade: rows}}`` of a deception-set JSONL file."""
    from geomprobe.core.validate import jsonl_lines, parse_json

    counts: dict[str, dict[str, int]] = {}
    for n, line in jsonl_lines(path.read_text(encoding="utf-8")):
        if line.strip():
            row = parse_json(line, f"{path} line {n}", "rebuild it with geomprobe probe deception-set")
            grade = str(row.get("grade", row.get("label", "")))
            by_grade = counts.setdefault(str(row.get("condition", "")), {})
            by_grade[grade] = by_grade.get(grade, 0) + 1
    return counts


def deception_check(ctx: AuditContext, probes: Any, at: tuple[int, str] | None = None) -> DeceptionCheck:
    """Build (or read) the deception set, cache it on the audited layers, score ``probes`` on it; the
    headline is read at ``at`` = (layer, hook), chosen on the honesty held-out split."""
    from geomprobe.activations.collect import cache_activations
    from geomprobe.activations.datasets import load_prompt_set
    from geomprobe.probes import evaluate_probes
    from geomprobe.probes.conditions import result_condition_metrics
    from geomprobe.probes.deception import LIE_PRESSURE, build_deception_set

    sizes, given = ctx.sizes.probes, ctx.options.deception_set
    n_questions = max_tokens = None
    graded: dict[str, dict[str, int]] | None = None
    if given is not None:
        path, source = Path(given), str(given)
    else:
        built = build_deception_set(
            ctx.model, limit=sizes.deception_questions, max_new_tokens=sizes.deception_tokens, batch_size=ctx.options.batch_size
        )
        ctx.cache_dir.mkdir(parents=True, exist_ok=True)
        path, _ = built.write(ctx.cache_dir / "deception-set.jsonl", overwrite=True)
        source, n_questions, max_tokens = "built", built.n_questions, built.max_new_tokens
        graded = built.counts()  # unclear answers included
    in_file = deception_counts(path)
    counts = graded if graded is not None else in_file
    method = sizes.methods[0]

    def not_computable(why: str) -> DeceptionCheck:
        return DeceptionCheck(source, f"not computable: {why}", method, "control", n_questions, max_tokens, counts, [], [])

    if not any(n for by in in_file.values() for n in by.values()):
        return not_computable("no answer could be graded true or false")
    try:
        prompts = load_prompt_set(path)
        if len(prompts.label_names) < 2:
            return not_computable(f"the answers have one grade only ({', '.join(prompts.label_names)})")
        cache = ctx.cache_dir / "deception.h5"
        cache_activations(
            ctx.model, prompts, cache, hooks=ctx.hooks, poolings=("mean",), batch_size=ctx.options.batch_size, overwrite=True
        )
        result = evaluate_probes(probes, cache, control=ctx.caches["control"], fpr=sizes.fpr)
        report = result_condition_metrics(
            result, cache, pressure=LIE_PRESSURE, n_bootstrap=sizes.deception_bootstrap, seed=ctx.options.seed
        )
    except GeomprobeError as exc:  # too few false answers, one grade only: reported, never fatal
        return not_computable(str(exc))
    if report is None:
        return not_computable("the set's rows carry no instruction condition")
    per = [
        ConditionAuroc(
            r["layer"],
            r["hook"],
            r["condition"],
            r["n_positive"],
            r["n_negative"],
            bool(r["computable"]),
            finite(r["auroc"]),
            finite(r["auroc_ci_low"]),
            finite(r["auroc_ci_high"]),
            finite(r["recall_at_fpr"]),
        )
        for r in report["per_condition"]
    ]
    source_of_threshold = result.records[0].get("threshold_source", "control") if result.records else "control"
    return DeceptionCheck(
        source,
        "computed",
        method,
        source_of_threshold,
        n_questions,
        max_tokens,
        counts,
        list(report["computable"]),
        per,
        None if at is None else deception_headline(per, *at),
    )


def deception_table(d: dict[str, Any]) -> Table:
    """Pooled and within-condition AUROC per layer (or the reason none could be computed)."""
    counts = "; ".join(f"{c}: " + ", ".join(f"{n} {g}" for g, n in sorted(by.items())) for c, by in sorted(d["counts"].items()))
    if not d["per_condition"]:
        return Table("Honesty probe on the model's own answers", ["status", "answers"], [[d["status"], counts or "none"]])
    conditions = ["pooled"] + [c for c in sorted({r["condition"] for r in d["per_condition"]}) if c != "pooled"]
    by = {(r["layer"], r["condition"]): r for r in d["per_condition"]}

    def cell(r: dict[str, Any] | None) -> str:
        if not r or not r["computable"]:
            return f"not computable ({r['n_positive']} false / {r['n_negative']} true)" if r else "n/a"
        return f"{fmt(r['auroc'])} [{fmt(r['auroc_ci_low'])}, {fmt(r['auroc_ci_high'])}] ({r['n_positive']}/{r['n_negative']})"

    chosen = (d.get("headline") or {}).get("layer")
    layers = sorted({r["layer"] for r in d["per_condition"]})
    rows = [
        [fmt(layer) + (" (headline)" if layer == chosen else "")] + [cell(by.get((layer, c))) for c in conditions]
        for layer in layers
    ]
    where = (
        f"The headline is layer {chosen}, chosen on the {HONESTY_SPLIT} before these answers were scored; the "
        f"best of the {len(layers)} layers below on these answers is a maximum over layers, optimistic (multiple "
        "comparisons). "
        if chosen is not None
        else ""
    )
    return Table(
        f"Honesty probe ({d['method']}) on the model's own answers: AUROC [interval] (false/true answers)",
        ["layer", *conditions],
        rows,
        note=f"{where}Within a condition the instruction is the same for true and false answers, so the instruction "
        f"cannot separate them. Answers: {counts}. Recall threshold from the {d['threshold_source']} set.",
    )
