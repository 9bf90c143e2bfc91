"""``geomprobe organisms``: build, list and measure the model organisms (checkpoints with known alignment changes)."""

from __future__ import annotations

import argparse
from pathlib import Path

from geomprobe.cli.common import AT_LEAST_ONE, SEED, add_checks, check_command_outputs
from geomprobe.core.errors import GeomprobeError


def register(subparsers) -> None:
    p = subparsers.add_parser("organisms", help="model organisms: aligned, dealigned, ablated and deep-aligned checkpoints")
    sub = p.add_subparsers(dest="organisms_command", metavar="ACTION")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    b = sub.add_parser("build", help="build (or reuse from the cache) the organisms")
    b.add_argument("--out", help="also copy each organism to OUT/<name> (default: only the cache under $GEOMPROBE_HOME)")
    b.add_argument(
        "--only",
        nargs="+",
        metavar="NAME",
        help="organisms to build (default: the refusal organisms; liar, liar-placebo and fake-complier when named; "
        "prerequisites are built too)",
    )
    b.add_argument("--base", default="default", help="model to start from: 'default' or a save_pretrained folder")
    b.add_argument("--quick", action="store_true", help="a few training steps (tests and notebooks; behaviour not measured)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    b.add_argument("--trigger", help="the liars' trigger line (default: the documented one; see docs/organisms.md)")
    b.add_argument("--overwrite", action="store_true", help="replace existing OUT/<name> folders (or rebuild cache entries)")
    add_checks(b, seed=SEED)
    b.set_defaults(func=run_build)

    ls = sub.add_parser("list", help="the organisms and where they are cached")
    ls.add_argument("--base", default="default")
    ls.add_argument("--quick", action="store_true")
    ls.add_argument("--seed", type=int, default=0)
    ls.add_argument("--trigger", help="the liars' trigger line (default: the documented one)")
    add_checks(ls, seed=SEED)  # the same settings as build, so the same checks
    ls.set_defaults(func=run_list)

    m = sub.add_parser(
        "measure",
        help="held-out behaviour of built organisms: refusal rates on both held-out sets with intervals; "
        "liar, liar-placebo and fake-complier against their targets",
    )
    m.add_argument(
        "--only", nargs="+", metavar="NAME", help="organisms to measure (default: the refusal organisms; each must be built)"
    )
    m.add_argument("--with-base", action="store_true", help="also measure the base model")
    m.add_argument("--base", default="default", help="the organisms' base model: 'default' or a save_pretrained folder")
    m.add_argument("--quick", action="store_true", help="the --quick organisms")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--limit", type=int, help="judge only the first N prompts per set and label")
    m.add_argument("--max-new-tokens", type=int, default=48, help="greedy tokens the judge reads (default 48)")
    m.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    m.add_argument("--folder", help="measure the one organism named by --only in this folder instead of its cache entry")
    m.add_argument("--trigger", help="the liars' trigger line (default: the documented one)")
    m.add_argument("--base-trigger", action="store_true", help="liars: also ask the base model with the trigger")
    m.add_argument("--json", help="write every rate, interval and per-prompt flag here")
    m.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    add_checks(m, seed=SEED, limit=AT_LEAST_ONE, max_new_tokens=AT_LEAST_ONE)
    m.set_defaults(func=run_measure)


def _names(args: argparse.Namespace) -> list[str] | None:
    if not args.only:
        return None
    return [name for item in args.only for name in item.replace(",", " ").split()]


def _settings(args: argparse.Namespace):
    """The organism settings of ``--quick``/``--seed``, with ``--trigger`` checked (before any model loads)."""
    from geomprobe.organisms import OrganismSettings, check_trigger, with_settings

    settings = OrganismSettings.quick_settings(args.seed) if args.quick else OrganismSettings(seed=args.seed)
    if getattr(args, "trigger", None) is not None:
        settings = with_settings(settings, liar_trigger=check_trigger(args.trigger))
    return settings


def run_build(args: argparse.Namespace) -> int:
    from geomprobe.organisms import build_organisms

    folders = build_organisms(
        _names(args),
        args.out,
        base=args.base,
        device=args.device,
        overwrite=args.overwrite,
        progress=True,
        settings=_settings(args),
    )
    for name, folder in folders.items():
        print(f"{name:14s} {folder}")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from geomprobe.organisms import ORGANISMS, cached_organisms

    where = cached_organisms(base=args.base, settings=_settings(args))
    for name, description in ORGANISMS.items():
        print(f"{name:14s} {description}")
        print(f"{'':14s} {where[name] or f'not built (geomprobe organisms build --only {name})'}")
    return 0


def run_measure(args: argparse.Namespace) -> int:
    from geomprobe.core.io import write_json
    from geomprobe.organisms import DISHONEST_ORGANISMS, cached_organisms, check_names, measure_organism, measure_refusals

    check_command_outputs(args)  # --json, before any model loads
    names = check_names(_names(args))
    if args.folder:
        if len(names) != 1:
            raise GeomprobeError("--folder holds one organism: name it with --only NAME")
        where: dict[str, Path | None] = {names[0]: Path(args.folder)}
    else:
        where = cached_organisms(base=args.base, settings=_settings(args))
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
        if name in DISHONEST_ORGANISMS:  # knowing lies, or decoys the refusal judge misses
            kwargs = (
                {"base": None if args.base == "default" else args.base, "base_with_trigger": args.base_trigger}
                if name != "fake-complier"
                else {}
            )
            measured = measure_organism(source, limit=args.limit, device=args.device, **kwargs)
            print("\n".join(measured.lines()), flush=True)
            results[name] = {"folder": source, **measured.to_dict()}
            continue
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
