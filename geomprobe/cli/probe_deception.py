"""``geomprobe probe deception-set`` and the within-condition table of ``probe eval``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from geomprobe.cli.common import add_model_args, check_command_outputs, model_from_args, write_json
from geomprobe.core.errors import GeomprobeError


def register_deception_set(sub) -> None:
    d = sub.add_parser(
        "deception-set",
        help="build an evaluation set from the model's own graded answers (true/false under two instructions)",
        description="Ask questions with known answers under a neutral and a lie-pressure instruction, grade the model's "
        "greedy answers (true/false/unclear) and write the true/false rows as a JSONL set for geomprobe cache "
        "(unclear rows go to OUT.unclear.jsonl).",
    )
    add_model_args(d)
    d.add_argument("--out", required=True, help="JSONL file to write (rows {messages, label, condition, grade, ...})")
    d.add_argument(
        "--questions",
        default=None,
        help="JSONL questions {id, question, answer, aliases, wrong, category} (default: the bundled set)",
    )
    d.add_argument("--limit", type=int, default=None, help="ask only the first N questions (each under both instructions)")
    d.add_argument("--max-new-tokens", type=int, default=24, help="answer length limit in tokens (default 24)")
    d.add_argument("--batch-size", type=int, default=16)
    d.add_argument("--json", default=None, help="write the counts per condition and grade here")
    d.add_argument("--overwrite", action="store_true", help="replace OUT and OUT.unclear.jsonl if they exist")
    d.set_defaults(func=run_deception_set)


def run_deception_set(args: argparse.Namespace) -> int:
    from geomprobe.probes.deception import build_deception_set, deception_outputs
    from geomprobe.probes.grading import load_questions

    for name, value in (("--limit", args.limit), ("--max-new-tokens", args.max_new_tokens), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise GeomprobeError(f"{name} must be at least 1, got {value}")
    check_command_outputs(args, *deception_outputs(args.out))
    load_questions(args.questions, args.limit)  # bad questions fail before the model loads
    model = model_from_args(args)

    def progress(done: int, total: int) -> None:
        print(f"\rdeception-set: {done}/{total} answers", end="" if done < total else "\n", file=sys.stderr)

    built = build_deception_set(
        model, args.questions, limit=args.limit, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, progress=progress
    )
    path, side = built.write(args.out, overwrite=args.overwrite)
    counts = built.counts()
    print(f"{'condition':<14} {'true':>6} {'false':>6} {'unclear':>8}")
    for condition, c in counts.items():
        print(f"{condition:<14} {c['true']:>6} {c['false']:>6} {c['unclear']:>8}")
    print(f"deception-set: {len(built.rows)} graded rows to {path}, {len(built.unclear)} unclear to {side}", file=sys.stderr)
    if not any(c["true"] and c["false"] for c in counts.values()):
        print(
            "deception-set: warning: no condition has both true and false answers; within-condition AUROC will not be computable",
            file=sys.stderr,
        )
    if args.json:
        write_json(args.json, {"out": str(path), "unclear_out": str(side), **built.to_dict()})
    return 0


def _cell(record: dict[str, Any] | None) -> str:
    if record is None or record["auroc"] is None:
        return "not computable"
    return f"{record['auroc']:.3f} [{record['auroc_ci_low']:.2f},{record['auroc_ci_high']:.2f}]"


def print_condition_table(
    report: dict[str, Any],
    positive: str = "positive",
    negative: str = "negative",
    *,
    chosen: str | None = None,
    chosen_on: str = "",
) -> None:
    """One line per hook: pooled AUROC, AUROC within each condition, instruction AUROC; then the headline at
    ``chosen`` (a hook chosen on other rows), or the pooled maximum over hooks labelled as one."""
    names = ["pooled", *report["conditions"]]
    by_key = {(r["hook"], r["condition"]): r for r in report["per_condition"]}
    instruction = {r["hook"]: r for r in report["instruction_auroc"]}
    hooks = list(dict.fromkeys(r["hook"] for r in report["per_condition"]))
    ci = int(round(report["ci"] * 100))
    print(
        f"AUROC with {ci}% bootstrap intervals: pooled rows, within each instruction condition (true vs false answers), "
        "and instruction (lie-pressure vs neutral rows, grade ignored)"
    )
    print(f"{'hook':<28} " + " ".join(f"{n:>22}" for n in names) + (f" {'instruction':>22}" if instruction else ""))
    for hook in hooks:
        line = f"{hook:<28} " + " ".join(f"{_cell(by_key.get((hook, n))):>22}" for n in names)
        if instruction:
            line += f" {_cell(instruction.get(hook)):>22}"
        print(line)
    first = hooks[0]
    counts = ", ".join(
        f"{n}: {by_key[(first, n)]['n_positive']} {positive} / {by_key[(first, n)]['n_negative']} {negative}" for n in names
    )
    print(f"rows: {counts}")
    pooled = [r for r in report["per_condition"] if r["condition"] == "pooled" and r["auroc"] is not None]
    if chosen is not None and chosen in hooks:
        print(
            f"headline at {chosen} (chosen on the {chosen_on}): "
            + "; ".join(f"{n} {_cell(by_key.get((chosen, n)))}" for n in names)
        )
    if pooled:
        top = max(pooled, key=lambda r: r["auroc"])
        print(
            f"max over {len(hooks)} hooks: pooled {top['auroc']:.3f} at {top['hook']} (chosen on these rows: optimistic, "
            "multiple comparisons)"
        )
    skipped = [n for n in report["conditions"] if n not in report["computable"]]
    if skipped:
        print(f"probe: condition(s) {', '.join(skipped)} hold one grade only: not computable", file=sys.stderr)
