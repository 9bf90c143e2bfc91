"""``geomprobe`` command line: a thin layer over the Python API.

Each stage's subcommand lives in its own module here and exposes ``register(subparsers)``,
which adds a parser whose ``func`` default takes the parsed args and returns an exit code.
Bad input raises :class:`geomprobe.GeomprobeError`; it is printed as one line, exit code 2.

``--plugin MODULE_OR_FILE.py`` (repeatable, before the command; or ``GEOMPROBE_PLUGINS``, comma-separated)
imports a module first, so the cluster indices and probe kinds it registers are offered by every
command (``geomprobe --plugin my_index.py aqi ...``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from geomprobe.cli.common import check_numbers
from geomprobe.core.errors import GeomprobeError, raised_by_interrupt, redeliver_swallowed_interrupts

# Pipeline order; a module listed here that is absent is simply not offered.
SUBCOMMAND_MODULES = ("cache", "aqi", "subspace", "probe", "ches", "steer", "depth", "organisms", "audit", "merge")


def build_parser() -> argparse.ArgumentParser:
    from geomprobe.core import __version__

    parser = argparse.ArgumentParser(
        prog="geomprobe",
        description="Latent-geometry safety diagnostics for language models.",
    )
    parser.add_argument("--version", action="version", version=f"geomprobe {__version__}")
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module or .py file first (it registers cluster indices or probe kinds); repeatable",
    )
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


def plugin_names(argv: Sequence[str]) -> list[str]:
    """The ``--plugin`` values before the command, then those of ``GEOMPROBE_PLUGINS``."""
    names, i = [], 0
    while i < len(argv) and argv[i].startswith("--plugin"):
        if argv[i] == "--plugin" and i + 1 < len(argv):
            names.append(argv[i + 1])
            i += 2
        elif argv[i].startswith("--plugin="):
            names.append(argv[i].split("=", 1)[1])
            i += 1
        else:
            break
    names += [n.strip() for n in os.environ.get("GEOMPROBE_PLUGINS", "").split(",") if n.strip()]
    return names


def load_plugins(names: Sequence[str]) -> None:
    """Import each plugin once (a module name, or a path to a ``.py`` file)."""
    for name in names:
        try:
            if name.endswith(".py"):
                path = Path(name)
                module_name = path.stem
                if module_name in sys.modules:
                    continue
                spec = importlib.util.spec_from_file_location(module_name, path)
                if spec is None or spec.loader is None or not path.is_file():
                    raise GeomprobeError(f"plugin file {name!r} does not exist; pass a .py file or a module name")
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[module_name]
                    raise
            else:
                importlib.import_module(name)
        except ImportError as exc:
            raise GeomprobeError(f"cannot import plugin {name!r} ({exc}); check the name and PYTHONPATH") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; bad input is one ``geomprobe: error: ...`` line and exit code 2.

    Ctrl-C (at start-up too: imports and model loads take seconds) is one line and exit code 130.
    """
    redeliver_swallowed_interrupts()
    try:
        load_plugins(plugin_names(list(sys.argv[1:] if argv is None else argv)))
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
