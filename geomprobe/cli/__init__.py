"""``geomprobe`` command line: a thin layer over the Python API.

Each stage's subcommand lives in its own module here and exposes ``register(subparsers)``,
which adds a parser whose ``func`` default takes the parsed args and returns an exit code.
Bad input raises :class:`geomprobe.GeomprobeError`; it is printed as one line, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from geomprobe.cli.common import check_numbers
from geomprobe.core.errors import GeomprobeError, raised_by_interrupt

# Pipeline order; a module listed here that is absent is simply not offered.
SUBCOMMAND_MODULES = ("cache", "aqi", "subspace", "probe", "ches", "steer", "organisms", "audit", "merge")


def build_parser() -> argparse.ArgumentParser:
    from geomprobe.core import __version__

    parser = argparse.ArgumentParser(
        prog="geomprobe",
        description="Latent-geometry safety diagnostics for language models.",
    )
    parser.add_argument("--version", action="version", version=f"geomprobe {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; bad input is one ``geomprobe: error: ...`` line and exit code 2.

    Ctrl-C (at start-up too: imports and model loads take seconds) is one line and exit code 130.
    """
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        check_numbers(args)  # before any file is read or model loaded
        return int(args.func(args) or 0)
    except GeomprobeError as exc:
        print(f"geomprobe: error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ImportError) as exc:
        if not raised_by_interrupt(exc):
            raise
        print("geomprobe: interrupted; outputs were left as they were (a cache run resumes when rerun)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        # Last resort for a file error no stage turned into a GeomprobeError: still one line.
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"geomprobe: error: {exc.strerror or exc}{where}; check the path, free space and permissions", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
