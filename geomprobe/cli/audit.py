"""``geomprobe audit``: audit a checkpoint (optionally against a second one) and write a report."""

from __future__ import annotations

import argparse
import sys

from geomprobe.cli.common import AT_LEAST_ONE, AT_LEAST_ZERO, SEED, add_checks, add_model_args, model_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "audit",
        help="audit a checkpoint: AQI, subspace overlap, probes and steering per layer, with a report",
        description=(
            "Cache the bundled contrast sets and report per layer: AQI with interval and p-value, activation-subspace "
            "overlap, honesty-probe AUROC and recall at 1% control FPR, a steering dose-response, and the CHES of "
            "preference pairs (which would displace likelihood under DPO). Writes "
            "report.html (self-contained), report.md, metrics.json and PNGs into --out."
        ),
    )
    add_model_args(p)  # --model, --dtype, --device, --trust-remote-code, --device-map (they apply to --against too)
    p.add_argument(
        "--against",
        default=None,
        metavar="MODEL",
        help="a second checkpoint of the same architecture, loaded with the same options: adds per-layer "
        "deltas, transfer and weight-update overlap",
    )
    p.add_argument("--out", default="audit", help="output folder (default: ./audit)")
    p.add_argument("--quick", action="store_true", help="small sizes: 48 prompts per set, every 3rd layer, 50 resamples")
    p.add_argument("--layers", nargs="+", type=int, default=None, metavar="L", help="audit these block indices only")
    p.add_argument(
        "--fail-if",
        action="append",
        default=[],
        metavar="EXPR",
        help="exit 1 when this holds, e.g. 'aqi.max<0.3', 'probes.auroc.max<0.8' or, with --against, "
        "'delta.aqi.min<-0.05' (repeatable; see docs/audit.md)",
    )
    p.add_argument(
        "--deception-set",
        default=None,
        metavar="FILE.jsonl",
        help="graded answers from 'geomprobe probe deception-set' for the probe section's check on the "
        "model's own lies (default: built on the audited model)",
    )
    p.add_argument(
        "--preferences",
        default=None,
        metavar="FILE.jsonl",
        help="{prompt, chosen, rejected} rows for the CHES section (default: the bundled 'preferences' set)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier audit in --out")
    p.add_argument("--quiet", action="store_true", help="no per-stage progress")
    add_checks(p, layers=AT_LEAST_ZERO, seed=SEED, batch_size=AT_LEAST_ONE)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from geomprobe.audit import run_audit

    # run_audit checks --fail-if, --batch-size and --out before it loads anything.
    result = run_audit(
        args.model,
        args.against,
        args.out,
        quick=args.quick,
        layers=args.layers,
        fail_if=args.fail_if,
        seed=args.seed,
        dtype=args.dtype,
        device=args.device,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
        progress=not args.quiet,
        deception_set=args.deception_set,
        preferences=args.preferences,
        load=lambda ref: model_from_args(args, ref),
    )
    print(result.summary())
    for gate in result.gates:
        print(gate.line(), file=sys.stderr if gate.failed else sys.stdout)
    if result.failed:
        failed = [g.condition.text for g in result.gates if g.failed]
        print(f"geomprobe: audit failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
