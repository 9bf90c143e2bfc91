"""Argument helpers shared by the subcommands: model options, hooks, output flags and number checks."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from geomprobe.core.errors import GeomprobeError
from geomprobe.core.io import PLOT_SUFFIXES, Output, check_new_file, check_outputs, write_json  # noqa: F401  (re-exported for subcommands)

CHECKS_KEY = "_number_checks"  # where a parser keeps its checks in the parsed namespace


# Arguments naming what a command reads, and the side outputs every command writes the same way.
_INPUT_ARGS = (
    "cache",
    "caches",
    "probe_dir",
    "control",
    "probe",
    "vector",
    "dataset",
    "deception_set",
    "tokenizer",
    "base",
    "aligned",
    "finetuned",
    "model",
    "shards",
    "prefs",
    "prompts",
)
_SIDE_OUTPUTS = {"json": (), "plot": (*PLOT_SUFFIXES, ""), "html": (), "table": ()}  # a bare plot name is a PNG


def check_command_outputs(args: argparse.Namespace, *outputs: Output) -> list[Any]:
    """Check every output of a command at once, before any file is read or model loaded.

    ``outputs`` are the command's own (``--out`` ...); its ``--json``/``--plot``/``--html``/
    ``--table`` flags are added here. All must be distinct, none may replace an input, an
    existing one needs ``--overwrite``, and plots need a format matplotlib writes. Returns the
    checked paths of ``outputs`` in order (None where not given).
    """
    inputs: list[str] = []
    for name in _INPUT_ARGS:
        value = getattr(args, name, None)
        for item in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(item, str) and item and os.path.lexists(item):
                inputs.append(item)
    side = [
        Output(getattr(args, name), f"--{name}", suffixes=suffixes)
        for name, suffixes in _SIDE_OUTPUTS.items()
        if hasattr(args, name)
    ]
    return check_outputs([*outputs, *side], inputs=inputs, overwrite=bool(getattr(args, "overwrite", False)))[: len(outputs)]


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default="default", help="'default' (SmolLM2-135M-Instruct), a HF name, a folder or a .gguf file"
    )
    add_model_options(parser)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """How a model is loaded (dtype, device, remote code, device map), without naming it: for commands
    that load several checkpoints with the same options (``model_from_args(args, reference)``)."""
    parser.add_argument("--dtype", default="float32", help="float32 (default), bfloat16, float16")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code from the checkpoint (off by default)")
    parser.add_argument(
        "--device-map",
        default=None,
        metavar="MAP",
        help="spread one model over devices with accelerate: auto, balanced, sequential, or cpu (overrides --device)",
    )


def model_from_args(args: argparse.Namespace, model: str | None = None):
    """The model of ``--model`` (or ``model``, e.g. a second checkpoint) loaded with the parsed model options."""
    from geomprobe.models import load_model

    device_map = getattr(args, "device_map", None)
    if device_map == "cpu" or (device_map or "").startswith("cuda"):
        device_map = {"": device_map}  # one target: the whole model there
    return load_model(
        args.model if model is None else model,
        dtype=args.dtype,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
        device_map=device_map,
    )


def add_hooks_arg(parser: argparse.ArgumentParser, help_default: str = "every layer's resid_post") -> None:
    parser.add_argument(
        "--hooks",
        nargs="+",
        default=None,
        metavar="HOOK",
        help=f"hook names or short names with layers, e.g. resid_post:0-5 blocks.3.hook_mlp_out (default: {help_default})",
    )


def add_overwrite_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files (refused otherwise)")


# -- number checks, run on the parsed arguments before any file is read or model loaded -----------
@dataclass(frozen=True)
class Range:
    """Allowed values of one numeric option: finite, an int when ``integer``, within the bounds."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    also: tuple[str, ...] = ()  # words accepted besides numbers, e.g. ("auto",)

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"{kind} in {left}{_number(self.low)}, {_number(self.high)}{right}"
        elif self.low is not None:
            text = f"{kind} {'>' if self.low_open else '>='} {_number(self.low)}"
        elif self.high is not None:
            text = f"{kind} {'<' if self.high_open else '<='} {_number(self.high)}"
        else:
            text = f"a finite {kind.split()[-1]}"
        return " or ".join([text, *(repr(word) for word in self.also)])

    def allows(self, value: Any) -> bool:
        if isinstance(value, str) and value in self.also:
            return True
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if not math.isfinite(value) or (self.integer and value != int(value)):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


AT_LEAST_ONE = Range(low=1, integer=True)
AT_LEAST_ZERO = Range(low=0, integer=True)
SEED = Range(low=0, high=2**32 - 1, integer=True)  # numpy and torch seeds are unsigned 32-bit
OPEN_UNIT = Range(low=0, high=1, low_open=True, high_open=True)
UNIT = Range(low=0, high=1)
POSITIVE = Range(low=0, low_open=True)
NON_NEGATIVE = Range(low=0)
FINITE = Range()


def add_checks(parser: argparse.ArgumentParser, **ranges: Range) -> None:
    """Declare the allowed values of ``parser``'s numeric options (keyword = the option's dest).

    ``check_numbers`` enforces them on the parsed arguments, in the CLI layer, before the command
    reads a file or loads a model; a bad value is one ``GeomprobeError`` line naming the option.
    """
    known = {action.dest: action for action in parser._actions}
    checks = dict(parser.get_default(CHECKS_KEY) or {})
    for dest, allowed in ranges.items():
        if dest not in known:
            raise ValueError(f"no option {dest!r} on parser {parser.prog!r}")
        checks[dest] = (known[dest].option_strings[-1] if known[dest].option_strings else dest, allowed)
    parser.set_defaults(**{CHECKS_KEY: checks})


def check_numbers(args: argparse.Namespace) -> None:
    """Raise one ``GeomprobeError`` line for the first option outside its declared range."""
    checks: dict[str, tuple[str, Range]] = getattr(args, CHECKS_KEY, None) or {}
    for dest, (flag, allowed) in checks.items():
        value = getattr(args, dest, None)
        values: Sequence[Any] = value if isinstance(value, (list, tuple)) else [value]
        for item in values:
            if item is not None and not allowed.allows(item):
                raise GeomprobeError(f"{flag} must be {allowed.describe()}, got {item!r}; pass a value in that range")
