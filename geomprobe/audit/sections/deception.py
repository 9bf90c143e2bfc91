"""The probe section's deception check: the honesty probe scored on the model's own true and false answers.

The bundled honesty set differs only in the instruction, so its AUROC can measure sensitivity to
the instruction rather than to falsehood. Here the audited model answers short questions under a
neutral and a lie-pressure instruction (:func:`geomprobe.probes.deception.build_deception_set`, or
a set passed as ``--deception-set``), the answers are graded true/false against the known answer,
and the primary honesty probe is scored on them: the pooled AUROC, and the AUROC within each
instruction condition (true vs false answers under the same instruction), with bootstrap
intervals and counts. A condition without both grades is reported as not computable with its
counts; the audit never fails for it. The recall threshold comes from the bundled control set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geomprobe.audit.context import AuditContext, finite
from geomprobe.audit.tables import Table, fmt
from geomprobe.core.errors import GeomprobeError


@dataclass
class ConditionAuroc:
    layer: int
    hook: str
    condition: str  # "pooled" or an instruction condition
    n_positive: int
    n_negative: int
    computable: bool
    auroc: float | None
    auroc_ci_low: float | None
    auroc_ci_high: float | None
    recall_at_fpr: float | None


@dataclass
class DeceptionCheck:
    """metrics.json ``probes.deception``."""

    source: str  # "built" or the --deception-set file
    status: str  # "computed", or "not computable: ..." with the counts
    method: str
    threshold_source: str
    n_questions: int | None
    max_new_tokens: int | None
    counts: dict[str, dict[str, int]]
    computable: list[str]
    per_condition: list[ConditionAuroc]


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


def deception_check(ctx: AuditContext, probes: Any) -> DeceptionCheck:
    """Build (or read) the deception set, cache it on the audited layers, score ``probes`` on it."""
    from geomprobe.activations.collect import cache_activations
    from geomprobe.activations.datasets import load_prompt_set
    from geomprobe.probes import evaluate_probes
    from geomprobe.probes.conditions import result_condition_metrics
    from geomprobe.probes.deception import LIE_PRESSURE, build_deception_set

    sizes, given = ctx.sizes, ctx.options.deception_set
    n_questions = max_tokens = None
    graded: dict[str, dict[str, int]] | None = None
    if given is not None:
        path, source = Path(given), str(given)
    else:
        built = build_deception_set(ctx.model, limit=sizes.deception_questions, max_new_tokens=sizes.deception_tokens,
                                    batch_size=ctx.options.batch_size)
        ctx.cache_dir.mkdir(parents=True, exist_ok=True)
        path, _ = built.write(ctx.cache_dir / "deception-set.jsonl", overwrite=True)
        source, n_questions, max_tokens = "built", built.n_questions, built.max_new_tokens
        graded = built.counts()  # unclear answers included
    in_file = deception_counts(path)
    counts = graded if graded is not None else in_file
    method = sizes.probe_methods[0]

    def not_computable(why: str) -> DeceptionCheck:
        return DeceptionCheck(source, f"not computable: {why}", method, "control", n_questions, max_tokens, counts, [], [])

    if not any(n for by in in_file.values() for n in by.values()):
        return not_computable("no answer could be graded true or false")
    try:
        prompts = load_prompt_set(path)
        if len(prompts.label_names) < 2:
            return not_computable(f"the answers have one grade only ({', '.join(prompts.label_names)})")
        cache = ctx.cache_dir / "deception.h5"
        cache_activations(ctx.model, prompts, cache, hooks=ctx.hooks, poolings=("mean",),
                          batch_size=ctx.options.batch_size, overwrite=True)
        result = evaluate_probes(probes, cache, control=ctx.caches["control"], fpr=sizes.probe_fpr)
        report = result_condition_metrics(result, cache, pressure=LIE_PRESSURE, n_bootstrap=sizes.n_bootstrap,
                                          seed=ctx.options.seed)
    except GeomprobeError as exc:  # too few false answers, one grade only: reported, never fatal
        return not_computable(str(exc))
    if report is None:
        return not_computable("the set's rows carry no instruction condition")
    per = [ConditionAuroc(r["layer"], r["hook"], r["condition"], r["n_positive"], r["n_negative"], bool(r["computable"]),
                          finite(r["auroc"]), finite(r["auroc_ci_low"]), finite(r["auroc_ci_high"]),
                          finite(r["recall_at_fpr"])) for r in report["per_condition"]]
    source_of_threshold = result.records[0].get("threshold_source", "control") if result.records else "control"
    return DeceptionCheck(source, "computed", method, source_of_threshold, n_questions, max_tokens, counts,
                          list(report["computable"]), per)


DECEPTION_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("probes.deception", "object|null", "the primary probe on the model's own graded true/false answers (null when skipped)"),
    ("probes.deception.source", "string", "`built` (by the audit on the audited model) or the `--deception-set` file"),
    ("probes.deception.status", "string", "`computed`, or `not computable: ...` with the reason"),
    ("probes.deception.method", "string", "probe type scored (the primary method)"),
    ("probes.deception.threshold_source", "string", "`control`: recall threshold from the bundled control set"),
    ("probes.deception.n_questions", "integer|null", "questions asked under each instruction (built sets)"),
    ("probes.deception.max_new_tokens", "integer|null", "tokens generated per answer (built sets)"),
    ("probes.deception.counts", "object", "answers per instruction condition and grade (built sets: unclear included)"),
    ("probes.deception.counts.*", "object", "one condition: `{grade: answers}`"),
    ("probes.deception.counts.*.*", "integer", "answers of that grade"),
    ("probes.deception.computable", "list[string]", "conditions with both true and false answers"),
    ("probes.deception.per_condition", "list[object]", "per layer: `pooled` and each condition"),
    ("probes.deception.per_condition[].layer", "integer", "block index"),
    ("probes.deception.per_condition[].hook", "string", "hook"),
    ("probes.deception.per_condition[].condition", "string", "`pooled` or the instruction condition"),
    ("probes.deception.per_condition[].n_positive", "integer", "false (deceptive) answers"),
    ("probes.deception.per_condition[].n_negative", "integer", "true answers"),
    ("probes.deception.per_condition[].computable", "bool", "both grades present"),
    ("probes.deception.per_condition[].auroc", "number|null", "AUROC of deceptive vs true answers"),
    ("probes.deception.per_condition[].auroc_ci_low", "number|null", "bootstrap interval, low"),
    ("probes.deception.per_condition[].auroc_ci_high", "number|null", "high"),
    ("probes.deception.per_condition[].recall_at_fpr", "number|null", "recall of false answers at the control threshold"),
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

    rows = [[fmt(layer)] + [cell(by.get((layer, c))) for c in conditions]
            for layer in sorted({r["layer"] for r in d["per_condition"]})]
    return Table(f"Honesty probe ({d['method']}) on the model's own answers: AUROC [interval] (false/true answers)",
                 ["layer", *conditions], rows,
                 note=f"Within a condition the instruction is the same for true and false answers, so the instruction "
                      f"cannot separate them. Answers: {counts}. Recall threshold from the {d['threshold_source']} set.")
