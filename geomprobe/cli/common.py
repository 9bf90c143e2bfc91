"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse

from geomprobe.core.io import check_new_file, write_json  # noqa: F401  (re-exported for subcommands)


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
    from geomprobe.models import load_model

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
