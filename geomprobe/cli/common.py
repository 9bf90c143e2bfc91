"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from ..errors import GeomprobeError


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default", help="'default' (SmolLM2-135M-Instruct), a HF name, a folder or a .gguf file")
    parser.add_argument("--dtype", default="float32", help="float32 (default), bfloat16, float16")
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow model code from the checkpoint (off by default)")
    parser.add_argument(
        "--device-map", default=None, metavar="MAP",
        help="spread one model over devices with accelerate: auto, balanced, sequential, or cpu (overrides --device)",
    )


def model_from_args(args: argparse.Namespace):
    from ..models import load_model

    device_map = getattr(args, "device_map", None)
    if device_map == "cpu" or (device_map or "").startswith("cuda"):
        device_map = {"": device_map}  # one target: the whole model there
    return load_model(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code,
                      device_map=device_map)


def add_hooks_arg(parser: argparse.ArgumentParser, help_default: str = "every layer's resid_post") -> None:
    parser.add_argument(
        "--hooks", nargs="+", default=None, metavar="HOOK",
        help=f"hook names or short names with layers, e.g. resid_post:0-5 blocks.3.hook_mlp_out (default: {help_default})",
    )


def write_json(path: str | Path, payload: Any) -> Path:
    """Write JSON atomically (never a half-written file under the final name); NaN becomes null."""
    path = Path(path)
    if path.is_dir():
        raise GeomprobeError(f"--json {str(path)!r} is a directory; give a file name")
    if not path.parent.exists():
        raise GeomprobeError(f"folder {str(path.parent)!r} for {path.name} does not exist; create it first")

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
            return clean(value.item())
        if hasattr(value, "tolist"):
            return clean(value.tolist())
        return value

    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(clean(payload), indent=2) + "\n")
    tmp.replace(path)
    return path


def check_new_file(path: str | Path | None, what: str) -> None:
    """Fail early (before long work) when an output file cannot be written."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise GeomprobeError(f"{what} {str(path)!r} is a directory; give a file name")
    if not path.parent.exists():
        raise GeomprobeError(f"folder {str(path.parent)!r} for {what} does not exist; create it first")
