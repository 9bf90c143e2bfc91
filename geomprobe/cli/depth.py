"""``geomprobe depth``: how deep is an aligned checkpoint's alignment relative to its base?

    geomprobe depth --base A --aligned B [--limit N] [--ks 0,1,2,5,10,20] [--max-tokens N] --out DIR [--overwrite]

Writes DIR/depth.json (the result, with the texts) and DIR/depth.png, and prints a short table.
Everything that can be checked without a model (the numbers, --ks against --max-tokens, the output
folder, the prompt file, two checkpoint folders' architectures) is checked before any model loads.
"""

from __future__ import annotations

import argparse
from typing import Any

from geomprobe.cli.common import (
    AT_LEAST_ONE,
    SEED,
    Output,
    add_checks,
    add_model_options,
    check_command_outputs,
    model_from_args,
)


def _ks(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 0,1,2,5,10,20") from None


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "depth",
        help="alignment depth: per-position KL(aligned || base) and the prefilling attack",
        description=(
            "Teacher-forced KL(B || A) per response position on B's own replies and on A's answers to harmful prompts, "
            "and the judge's refusal rate of B after the first k tokens of A's answer are prefilled (Qi et al. 2024). "
            "See docs/depth.md."
        ),
    )
    p.add_argument("--base", required=True, metavar="A", help="base checkpoint: 'default', a folder, a .gguf file or a HF name")
    p.add_argument("--aligned", required=True, metavar="B", help="aligned checkpoint of the same architecture and tokenizer")
    add_model_options(p)  # --dtype, --device, --trust-remote-code, --device-map: both checkpoints load with them
    p.add_argument(
        "--prompts",
        default="harmful-harmless",
        metavar="SET",
        help="prompt set (a bundled name or a JSONL file); its harmful class is used (default harmful-harmless)",
    )
    p.add_argument("--limit", type=int, default=32, help="harmful prompts used, the first ones in file order (default 32)")
    p.add_argument(
        "--ks",
        type=_ks,
        default=None,
        metavar="K,K,...",
        help="prefill lengths (default 0,1,2,5,10,20; an answer shorter than a default k is prefilled whole, "
        "a k given here that is longer than an answer is an error)",
    )
    p.add_argument("--max-tokens", type=int, default=48, help="tokens per response and per continuation (default 48)")
    p.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap replicates over prompts (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", required=True, metavar="DIR", help="folder for depth.json and depth.png")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier depth.json in --out")
    add_checks(p, limit=AT_LEAST_ONE, max_tokens=AT_LEAST_ONE, n_bootstrap=AT_LEAST_ONE, seed=SEED, batch_size=AT_LEAST_ONE)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from geomprobe.activations.datasets import load_prompt_set
    from geomprobe.plots import save_figure
    from geomprobe.plots.depth import plot_depth
    from geomprobe.steering.depth import DEFAULT_KS, alignment_depth, check_ks, check_pair_configs, harmful_prompts

    explicit = args.ks is not None
    ks = check_ks(args.ks if explicit else DEFAULT_KS, args.max_tokens)
    [out] = check_command_outputs(
        args, Output(args.out, "--out", "folder", what="geomprobe depth", holds="depth.json", owns=("depth.json", "depth.png"))
    )
    check_pair_configs(args.base, args.aligned)
    prompts = harmful_prompts(load_prompt_set(args.prompts), args.limit)
    base = model_from_args(args, args.base)
    aligned = model_from_args(args, args.aligned)
    result = alignment_depth(
        base,
        aligned,
        prompts,
        ks=ks,
        max_tokens=args.max_tokens,
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
        clamp=not explicit,
        batch_size=args.batch_size,
    )
    out.mkdir(parents=True, exist_ok=True)
    json_path = result.save(out / "depth.json")
    png_path = save_figure(plot_depth(result.to_dict()), out / "depth.png")
    print(
        f"# {result.aligned_id} (B) against {result.base_id} (A): layer n/a, dtype {result.dtype}, "
        f"{result.n_prompts} harmful prompts used ({result.n_used} with a compliant base answer), "
        f"{result.max_tokens} tokens"
    )
    print(result.table())
    half = "n/a (no KL)" if result.half_kl_tokens is None else str(result.half_kl_tokens)
    auc = "n/a" if result.prefill_auc is None else f"{result.prefill_auc:.3f}"
    print(f"depth: half the KL on B's replies by token {half}; prefill AUC {auc}")
    print(f"wrote {json_path}, {png_path}")
    return 0
