"""``geomprobe organisms``: build, list and measure the model organisms (checkpoints with known alignment changes)."""

from __future__ import annotations

import argparse

from geomprobe.cli.common import AT_LEAST_ONE, SEED, add_checks, check_command_outputs
from geomprobe.core.errors import GeomprobeError


def register(subparsers) -> None:
    p = subparsers.add_parser("organisms", help="model organisms: aligned, dealigned, ablated and deep-aligned checkpoints")
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

    m = sub.add_parser("measure", help="refusal rates of built organisms on both held-out sets, with intervals")
    m.add_argument("--only", nargs="+", metavar="NAME", help="organisms to measure (default: all; each must be built)")
    m.add_argument("--with-base", action="store_true", help="also measure the base model")
    m.add_argument("--base", default="default", help="the organisms' base model: 'default' or a save_pretrained folder")
    m.add_argument("--quick", action="store_true", help="the --quick organisms")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--limit", type=int, help="judge only the first N prompts per set and label")
    m.add_argument("--max-new-tokens", type=int, default=48, help="greedy tokens the judge reads (default 48)")
    m.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    m.add_argument("--json", help="write every rate, interval and per-prompt flag here")
    m.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    add_checks(m, seed=SEED, limit=AT_LEAST_ONE, max_new_tokens=AT_LEAST_ONE)
    m.set_defaults(func=run_measure)


def _names(args: argparse.Namespace) -> list[str] | None:
    if not args.only:
        return None
    return [name for item in args.only for name in item.replace(",", " ").split()]


def run_build(args: argparse.Namespace) -> int:
    from geomprobe.organisms import build_organisms

    folders = build_organisms(
        _names(args),
        args.out,
        base=args.base,
        quick=args.quick,
        seed=args.seed,
        device=args.device,
        overwrite=args.overwrite,
        progress=True,
    )
    for name, folder in folders.items():
        print(f"{name:12s} {folder}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from geomprobe.organisms import ORGANISMS, cached_organisms

    where = cached_organisms(seed=args.seed, quick=args.quick, base=args.base)
    for name, description in ORGANISMS.items():
        print(f"{name:12s} {description}")
        print(f"{'':12s} {where[name] or 'not built (geomprobe organisms build)'}")
    return 0


def run_measure(args: argparse.Namespace) -> int:
    from geomprobe.core.io import write_json
    from geomprobe.organisms import cached_organisms, check_names, measure_refusals

    check_command_outputs(args)  # --json, before any model loads
    names = check_names(_names(args))
    where = cached_organisms(seed=args.seed, quick=args.quick, base=args.base)
    missing = [n for n in names if where[n] is None]
    if missing:
        flags = " --quick" * args.quick + (f" --base {args.base}" if args.base != "default" else "")
        raise GeomprobeError(
            f"organism {missing[0]!r} is not built with these settings; "
            f"run: geomprobe organisms build --only {' '.join(missing)}{flags}"
        )
    models = {"base": args.base} if args.with_base else {}
    models.update({n: str(where[n]) for n in names})
    results = {}
    for name, source in models.items():
        r = measure_refusals(
            source,
            seed=args.seed,
            limit=args.limit,
            max_new_tokens=args.max_new_tokens,
            device=args.device,
            progress=True,
            model_id=source,
        )
        print(f"{name}  ({source})\n{r.table()}", flush=True)
        results[name] = r.to_dict()
    if args.json:
        write_json(args.json, results)
    return 0
