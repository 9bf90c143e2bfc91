"""``geomprobe subspace``: safety-subspace overlap in activation space and in weight space.

geomprobe subspace acts FILE.h5 [--hooks ...] [--positive-label NAME | --labels A B]
geomprobe subspace weights --base A --aligned B [--finetuned C]
geomprobe subspace project --base A --aligned B --finetuned C --mode orthogonal --out DIR
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from geomprobe.cli.common import (
    AT_LEAST_ONE,
    AT_LEAST_ZERO,
    SEED,
    Output,
    add_checks,
    add_hooks_arg,
    add_overwrite_arg,
    check_command_outputs,
    write_json,
)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _add_size_args(p: argparse.ArgumentParser) -> None:
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--energy",
        type=_float,
        default=0.9,
        help="keep the top directions holding this fraction of the energy, in (0, 1] (default 0.9)",
    )
    size.add_argument("--k", type=_int, default=None, help="keep exactly k directions instead of an energy fraction")
    p.add_argument(
        "--svd",
        default="auto",
        choices=["auto", "exact", "gram", "randomized"],
        help="SVD method (default auto: float64 Gram eigendecomposition up to 4096 on the smaller side, randomized above)",
    )
    p.add_argument("--device", default="auto", help="where the linear algebra runs: auto (cuda if available), cpu, cuda")
    p.add_argument("--seed", type=_int, default=0, help="seed for random baselines and randomized SVD (default 0)")
    add_checks(p, k=AT_LEAST_ONE, seed=SEED)


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", metavar="PATH", default=None, help="write the records (one per layer/matrix) as JSON")
    p.add_argument("--plot", metavar="PNG", default=None, help="write overlap-vs-layer and heatmap panels to this image")
    add_overwrite_arg(p)


def _add_checkpoint_args(p: argparse.ArgumentParser, finetuned_required: bool) -> None:
    p.add_argument("--base", required=True, help="base checkpoint: 'default', HF name, folder or .gguf")
    p.add_argument("--aligned", required=True, help="aligned checkpoint (same architecture)")
    p.add_argument("--finetuned", required=finetuned_required, default=None, help="fine-tuned checkpoint (same architecture)")
    p.add_argument("--include-embeddings", action="store_true", help="also compare embeddings and the LM head")
    p.add_argument("--trust-remote-code", action="store_true", help="allow model code from the checkpoints (off by default)")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "subspace",
        help="safety-subspace overlap (activation space, weight space)",
        description="Mode subspace overlap (MSO) between safety-relevant subspaces, with random baselines.",
    )
    sub = p.add_subparsers(dest="subspace_command", metavar="{acts,weights,project}")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    acts = sub.add_parser("acts", help="overlap of two prompt classes' activation subspaces, per layer")
    acts.add_argument("cache", metavar="FILE.h5", help="activation cache written by geomprobe cache")
    add_hooks_arg(acts, help_default="every hook in the file")
    acts.add_argument("--pooling", default="last", choices=["last", "mean"], help="pooled activations to use (default last)")
    who = acts.add_mutually_exclusive_group()
    who.add_argument("--positive-label", default=None, metavar="NAME", help="this class against every other labelled row")
    who.add_argument("--labels", nargs=2, default=None, metavar=("A", "B"), help="the two classes to compare")
    acts.add_argument(
        "--no-center",
        dest="center",
        action="store_false",
        help="do not centre each class (reproduces the reference; the shared mean inflates overlap)",
    )
    acts.add_argument("--n-draws", type=_int, default=100, help="random subspace pairs for the empirical baseline (default 100)")
    _add_size_args(acts)
    _add_output_args(acts)
    add_checks(acts, n_draws=AT_LEAST_ZERO)
    acts.set_defaults(func=run_acts)

    weights = sub.add_parser("weights", help="overlap of alignment and fine-tuning weight updates, per matrix")
    _add_checkpoint_args(weights, finetuned_required=False)
    weights.add_argument(
        "--group", default="layer", choices=["layer", "module"], help="summary printed per layer or per module type"
    )
    _add_size_args(weights)
    _add_output_args(weights)
    weights.set_defaults(func=run_weights)

    project = sub.add_parser(
        "project", help="write a checkpoint whose fine-tuning update is projected on/off the alignment subspace"
    )
    _add_checkpoint_args(project, finetuned_required=True)
    project.add_argument(
        "--mode",
        default="orthogonal",
        choices=["same", "orthogonal", "opposite"],
        help="keep the part in the alignment subspace (same), remove it (orthogonal) or reverse it (opposite)",
    )
    project.add_argument("--out", required=True, metavar="DIR", help="folder for the new checkpoint")
    project.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    project.add_argument("--json", metavar="PATH", default=None, help="write the per-matrix report as JSON")
    _add_size_args(project)
    project.set_defaults(func=run_project)


def _fmt(value: float) -> str:
    return "   nan" if value != value else f"{value:6.3f}"


def run_acts(args: argparse.Namespace) -> int:
    from geomprobe.subspace import activation_overlap_by_layer, check_energy

    check_command_outputs(args)
    if args.k is None:
        check_energy(args.energy)
    records = activation_overlap_by_layer(
        args.cache,
        hooks=args.hooks,
        pooling=args.pooling,
        positive_label=args.positive_label,
        label_pair=args.labels,
        energy=args.energy,
        k=args.k,
        center=args.center,
        n_draws=args.n_draws,
        seed=args.seed,
        device=args.device,
        method=args.svd,
    )
    first = records[0]
    print(
        f"# {first.model_id or args.cache}: {first.label_a} (n={first.n_a}) vs {first.label_b} (n={first.n_b}), "
        f"pooling={first.pooling}, {'centred' if first.centered else 'uncentred'}, "
        + (f"k={args.k}" if args.k is not None else f"energy={args.energy}")
    )
    print(f"{'hook':32s} {'k_a':>4s} {'k_b':>4s} {'MSO':>6s} {'rand':>6s} {'emp':>6s} {'dmu@a':>6s} {'dmu@b':>6s}")
    for r in records:
        print(
            f"{r.hook:32s} {r.k_a:4d} {r.k_b:4d} {_fmt(r.mso)} {_fmt(r.baseline)} {_fmt(r.baseline_empirical)} "
            f"{_fmt(r.mean_diff_in_a)} {_fmt(r.mean_diff_in_b)}"
        )
    if args.json:
        write_json(
            args.json, {"kind": "subspace-activations", "cache": str(args.cache), "records": [r.to_record() for r in records]}
        )
    if args.plot:
        from geomprobe.plots._style import save_figure
        from geomprobe.plots.subspace import plot_activation_overlap

        save_figure(plot_activation_overlap(records), args.plot)
    return 0


def run_weights(args: argparse.Namespace) -> int:
    from geomprobe.subspace import check_energy, grouped, weight_update_overlap

    check_command_outputs(args)
    if args.k is None:
        check_energy(args.energy)
    records = weight_update_overlap(
        args.base,
        args.aligned,
        args.finetuned,
        k=args.k,
        energy=args.energy,
        include_embeddings=args.include_embeddings,
        method=args.svd,
        device=args.device,
        seed=args.seed,
        trust_remote_code=args.trust_remote_code,
        progress=sys.stderr.isatty(),
    )
    against = "finetuned-aligned" if args.finetuned else "base weight"
    print(f"# A = aligned-base vs B = {against}; " + (f"k={args.k}" if args.k is not None else f"energy={args.energy}"))
    print(f"{args.group:>12s} {'n':>3s} {'MSO':>6s} {'rand':>6s} {'E(B|A)':>6s} {'rand':>6s} {'E(A|B)':>6s}")
    for g in grouped(records, args.group):
        print(
            f"{str(g.key):>12s} {g.n_matrices:3d} {_fmt(g.mso_mean)} {_fmt(g.baseline_mean)} {_fmt(g.energy_b_in_a)} "
            f"{_fmt(g.energy_baseline_b_in_a)} {_fmt(g.energy_a_in_b)}"
        )
    skipped = sum(r.status != "ok" for r in records)
    if skipped:
        print(f"# {skipped} matrices skipped (an update is exactly zero)")
    if args.json:
        write_json(
            args.json,
            {
                "kind": "subspace-weights",
                "base": args.base,
                "aligned": args.aligned,
                "finetuned": args.finetuned,
                "records": [r.to_record() for r in records],
                "by_layer": [g.to_record() for g in grouped(records, "layer")],
                "by_module": [g.to_record() for g in grouped(records, "module")],
            },
        )
    if args.plot:
        from geomprobe.plots._style import save_figure
        from geomprobe.plots.subspace import plot_weight_overlap

        title = f"{args.aligned} vs {args.finetuned or args.base}"
        save_figure(plot_weight_overlap(records, title=title), args.plot)
    return 0


def run_project(args: argparse.Namespace) -> int:
    from geomprobe.subspace import check_energy, project_finetune_update

    check_command_outputs(args, Output(args.out, "--out", "folder", what="checkpoint"))
    if args.k is None:
        check_energy(args.energy)
    result = project_finetune_update(
        args.base,
        args.aligned,
        args.finetuned,
        args.out,
        args.mode,
        k=args.k,
        energy=args.energy,
        include_embeddings=args.include_embeddings,
        method=args.svd,
        device=args.device,
        seed=args.seed,
        overwrite=args.overwrite,
        trust_remote_code=args.trust_remote_code,
    )
    print(
        f"wrote {result.out_dir} (mode={result.mode}, {len(result.matrices)} matrices projected, "
        f"fine-tuning energy kept {result.energy_kept:.3f})"
    )
    if args.json:
        write_json(
            args.json,
            {"kind": "subspace-projection", "out": str(result.out_dir), "mode": result.mode, "matrices": result.matrices},
        )
    return 0
