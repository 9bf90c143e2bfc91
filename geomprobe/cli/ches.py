"""``geomprobe ches``: CHES score per preference pair, ranked, with the top share flagged.

geomprobe ches PREFS.jsonl --model M [--layers final -1] [--top 0.33] [--rank-by ches|ln_ches]
               [--limit N] --out ches.json [--csv ches.csv] [--overwrite]
"""

from __future__ import annotations

import argparse
from typing import Any

from geomprobe.cli.common import (
    AT_LEAST_ONE,
    Output,
    Range,
    add_checks,
    add_model_args,
    add_overwrite_arg,
    check_command_outputs,
    model_from_args,
    write_json,
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "ches",
        help="CHES score of preference pairs (which pairs displace likelihood under DPO)",
        description="Centered hidden embedding similarity (Razin et al. 2025) of each {prompt, chosen, rejected} row, "
        "and its length-normalised variant; ranks the pairs and flags the top share.",
    )
    p.add_argument(
        "prefs", metavar="PREFS.jsonl", help="JSONL rows {prompt, chosen, rejected}, or the bundled name 'preferences'"
    )
    add_model_args(p)
    p.add_argument(
        "--layers",
        nargs="+",
        default=None,
        metavar="LAYER",
        help="'final' (the last hidden layer after the final norm, as in the paper; default) and/or block "
        "indices (resid_post; negative counts from the end); the first one ranks the pairs",
    )
    p.add_argument("--top", type=float, default=0.33, help="share of pairs to flag, in (0, 1] (default 0.33)")
    p.add_argument(
        "--rank-by", default="ches", choices=["ches", "ln_ches"], help="rank by CHES (default) or the length-normalised variant"
    )
    p.add_argument("--limit", type=int, default=None, help="score at most N pairs, spread evenly over the file")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass (default 8)")
    p.add_argument("--no-chat-template", dest="chat", action="store_false", help="feed 'prompt\\nresponse' instead of a chat")
    p.add_argument(
        "--no-end", dest="include_end", action="store_false", help="leave out the position that predicts the end of the response"
    )
    p.add_argument("--out", metavar="JSON", default=None, help="write every pair's scores, rank and flag as JSON")
    p.add_argument("--csv", metavar="PATH", default=None, help="also write one CSV line per pair")
    p.add_argument("--rows", type=int, default=10, help="pairs shown in the printed table (default 10)")
    add_overwrite_arg(p)
    add_checks(p, top=Range(low=0, high=1, low_open=True), limit=AT_LEAST_ONE, batch_size=AT_LEAST_ONE, rows=AT_LEAST_ONE)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from geomprobe.ches import ches_scores, load_preferences
    from geomprobe.core.io import atomic_write_text

    # Every check on files and rows runs before the model loads.
    check_command_outputs(
        args,
        Output(args.out, "--out", suffixes=(".json",), example_name="ches.json"),
        Output(args.csv, "--csv", suffixes=(".csv",), example_name="ches.csv"),
    )
    prefs = load_preferences(args.prefs, limit=args.limit)
    model = model_from_args(args)
    result = ches_scores(
        model, prefs, layers=args.layers, batch_size=args.batch_size, chat=args.chat, include_end=args.include_end
    )
    print(result.table(args.top, args.rank_by, rows=args.rows))
    if args.out:
        write_json(args.out, result.to_dict(args.top, args.rank_by))
        print(f"wrote {args.out}")
    if args.csv:
        atomic_write_text(args.csv, result.to_csv(args.top, args.rank_by))
        print(f"wrote {args.csv}")
    return 0
