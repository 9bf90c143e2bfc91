"""``geomprobe merge``: join the shard files of a data-parallel ``geomprobe cache --shard`` run."""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

from geomprobe.core.errors import GeomprobeError
from geomprobe.core.io import check_output_file


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "merge",
        help="join cache shards (geomprobe cache --shard) into one cache file",
        description=(
            "Join the shards OUT.rank{R}-of-{W}.h5 of a data-parallel cache run into OUT, prompt order preserved. "
            "By default OUT holds HDF5 virtual datasets over the shards (no copy; keep the shards beside it); "
            "--copy writes a self-contained file."
        ),
    )
    p.add_argument("out", help="merged cache file to write")
    p.add_argument("shards", nargs="*", help="shard files or globs (default: every OUT.rank*-of-*.h5 beside OUT)")
    p.add_argument("--copy", action="store_true", help="copy the data into a self-contained file instead of virtual datasets")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=run)


def expand_shards(out: Path, patterns: list[str]) -> list[Path]:
    from geomprobe.activations.distributed import find_shards

    if not patterns:
        found = find_shards(out)
        if not found:
            raise GeomprobeError(
                f"no shard files {out.stem}.rank*-of-*{out.suffix or '.h5'} beside {out}; pass the shards explicitly"
            )
        return found
    paths: list[Path] = []
    for pattern in patterns:
        if Path(pattern).exists():
            paths.append(Path(pattern))
            continue
        matched = sorted(glob.glob(pattern))
        if not matched:
            raise GeomprobeError(f"shard {pattern!r} does not exist and matches no file; check the path")
        paths.extend(Path(m) for m in matched)
    return paths


def run(args: argparse.Namespace) -> int:
    from geomprobe.activations.merge import merge_shards
    from geomprobe.activations.writer import CACHE_EXAMPLE_NAME

    out = check_output_file(args.out, overwrite=args.overwrite, example_name=CACHE_EXAMPLE_NAME)
    shards = expand_shards(out, list(args.shards))
    result = merge_shards(out, shards, copy=args.copy, overwrite=args.overwrite)
    print(result.closing_line())
    return 0
