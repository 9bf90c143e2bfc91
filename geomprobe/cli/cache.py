"""``geomprobe cache``: run a model over a prompt set and stream activations to HDF5."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from geomprobe.cli.common import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    Output,
    add_checks,
    add_hooks_arg,
    add_model_args,
    check_command_outputs,
    model_from_args,
)
from geomprobe.core.errors import GeomprobeError
from geomprobe.core.io import check_output_file, translate_write_errors

DEFAULT_FOLDER = Path("activations")


def default_output(model: str, dataset: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name if model != "default" else "smollm2-135m-instruct")
    return DEFAULT_FOLDER / f"{Path(dataset).stem}--{slug.strip('-')}.h5"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "cache",
        help="cache per-layer activations of a prompt set to HDF5",
        description="Run a model on a prompt set and stream pooled hidden states to an HDF5 file.",
    )
    add_model_args(p)
    p.add_argument(
        "--dataset", default="harmful-harmless", help="bundled name (harmful-harmless, honesty, control) or a .jsonl/.csv file"
    )
    p.add_argument("--out", default=None, help="output .h5 file (default: activations/<dataset>--<model>.h5)")
    add_hooks_arg(p)
    p.add_argument("--pooling", default="last,mean", help="comma-separated: last, mean, all (default last,mean)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--store-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--limit", type=int, default=None, help="take a stratified subset of N prompts")
    p.add_argument("--no-chat-template", action="store_true", help="feed raw text instead of the chat template")
    p.add_argument(
        "--truncate",
        default=None,
        choices=["left", "right"],
        help="shorten prompts longer than the model's context from this side (default: refuse them)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--restart", action="store_true", help="discard an interrupted run's saved parts instead of resuming")
    p.add_argument("--segment-rows", type=int, default=None, help="prompts per saved part (resume granularity; default ~64 MiB)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-layer summary")
    p.add_argument(
        "--shard",
        default=None,
        metavar="auto|R/W",
        help="cache only this rank's rows into OUT.rank{R}-of-{W}.h5: auto (RANK/WORLD_SIZE from torchrun) or e.g. 0/4",
    )
    p.add_argument(
        "--merge", action="store_true", help="with --shard: rank 0 waits for every shard, then runs geomprobe merge into OUT"
    )
    p.add_argument(
        "--merge-copy", action="store_true", help="with --merge: write a self-contained copy instead of virtual datasets"
    )
    p.add_argument("--merge-timeout", type=float, default=86400.0, help="with --merge: seconds rank 0 waits for the other shards")
    add_checks(p, batch_size=AT_LEAST_ONE, limit=AT_LEAST_ONE, segment_rows=AT_LEAST_ONE, merge_timeout=NON_NEGATIVE)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else default_output(args.model, args.dataset)
    made_folder = args.out is None and not out.parent.exists()
    if made_folder:
        with translate_write_errors(out.parent):
            out.parent.mkdir()
    try:
        return _run(args, out)
    except BaseException:
        if made_folder:  # a failed or interrupted first run leaves no empty default folder behind
            try:
                out.parent.rmdir()
            except OSError:
                pass
        raise


def _run(args: argparse.Namespace, out: Path) -> int:
    from geomprobe.activations.collect import cache_activations
    from geomprobe.activations.datasets import load_prompt_set
    from geomprobe.activations.distributed import parse_shard, rank_device
    from geomprobe.activations.segments import check_not_busy
    from geomprobe.activations.writer import CACHE_EXAMPLE_NAME

    shard = parse_shard(args.shard)
    if (args.merge or args.merge_copy) and shard is None:
        raise GeomprobeError("--merge joins shards; use it with --shard auto or --shard R/W")
    merged_out = out
    if shard is not None:
        out = shard.path(out)
        args.device = rank_device(args.device, shard)
        if args.merge and shard.rank == 0:
            check_output_file(merged_out, overwrite=args.overwrite, example_name=CACHE_EXAMPLE_NAME)
    # Check everything cheap before loading the model.
    check_command_outputs(args, Output(out, "--out", example_name=CACHE_EXAMPLE_NAME))
    check_not_busy(out)
    prompts = load_prompt_set(args.dataset, limit=args.limit)
    model = model_from_args(args)
    result = cache_activations(
        model,
        prompts,
        out,
        hooks=args.hooks,
        poolings=args.pooling,
        batch_size=args.batch_size,
        store_dtype=args.store_dtype,
        chat_template=not args.no_chat_template,
        overwrite=args.overwrite,
        restart=args.restart,
        segment_rows=args.segment_rows,
        progress=not args.quiet and sys.stderr.isatty(),
        shard=(shard.rank, shard.world) if shard is not None else None,
        truncate=args.truncate,
    )
    print(
        f"cached {model.model_id} on {prompts.name} ({len(prompts)} prompts, labels: {', '.join(prompts.label_names) or 'none'})"
    )
    print(
        f"dtype {str(model.dtype).removeprefix('torch.')} compute, {args.store_dtype} stored; "
        f"poolings {', '.join(result.poolings)}"
    )
    if not args.quiet:
        for summary in result.summaries:
            print(summary.line())
    print(result.closing_line())
    if shard is not None and args.merge and shard.rank == 0:
        from geomprobe.activations.distributed import shard_paths, wait_for_files
        from geomprobe.activations.merge import merge_shards

        paths = shard_paths(merged_out, shard.world)
        wait_for_files(paths, timeout=args.merge_timeout)
        merged = merge_shards(merged_out, paths, copy=args.merge_copy, overwrite=args.overwrite)
        print(merged.closing_line())
    return 0
