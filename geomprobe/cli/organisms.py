"""``geomprobe organisms``: build and list the model organisms (checkpoints with known alignment changes)."""

from __future__ import annotations

import argparse

from geomprobe.cli.common import SEED, add_checks


def register(subparsers) -> None:
    p = subparsers.add_parser("organisms", help="model organisms: aligned, dealigned and ablated checkpoints")
    sub = p.add_subparsers(dest="organisms_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    b = sub.add_parser("build", help="build (or reuse from the cache) the organisms")
    b.add_argument("--out", help="also copy each organism to OUT/<name> (default: only the cache under $GEOMPROBE_HOME)")
    b.add_argument("--only", nargs="+", metavar="NAME", help="organisms to build (default: all; prerequisites are built too)")
    b.add_argument("--base", default="default", help="model to start from: 'default' or a save_pretrained folder")
    b.add_argument("--quick", action="store_true", help="a few training steps (tests and notebooks; behaviour not measured)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    b.add_argument("--overwrite", action="store_true", help="replace existing OUT/<name> folders (or rebuild cache entries)")
    add_checks(b, seed=SEED)
    b.set_defaults(func=run_build)

    ls = sub.add_parser("list", help="the organisms and where they are cached")
    ls.add_argument("--base", default="default")
    ls.add_argument("--quick", action="store_true")
    ls.add_argument("--seed", type=int, default=0)
    add_checks(ls, seed=SEED)  # the same settings as build, so the same checks
    ls.set_defaults(func=run_list)


def _names(args: argparse.Namespace) -> list[str] | None:
    if not args.only:
        return None
    return [name for item in args.only for name in item.replace(",", " ").split()]


def run_build(args: argparse.Namespace) -> int:
    from geomprobe.organisms import build_organisms

    folders = build_organisms(_names(args), args.out, base=args.base, quick=args.quick, seed=args.seed,
                              device=args.device, overwrite=args.overwrite, progress=True)
    for name, folder in folders.items():
        print(f"{name:10s} {folder}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from geomprobe.organisms import ORGANISMS, cached_organisms

    where = cached_organisms(seed=args.seed, quick=args.quick, base=args.base)
    for name, description in ORGANISMS.items():
        print(f"{name:10s} {description}")
        print(f"{'':10s} {where[name] or 'not built (geomprobe organisms build)'}")
    return 0
