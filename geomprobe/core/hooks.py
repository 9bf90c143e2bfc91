"""Hook-point names: parse what users type into TransformerLens hook names.

A hook spec is either a full TransformerLens name (``blocks.3.hook_resid_post``) or a short
name with an optional layer list: ``resid_post`` (every layer), ``mlp_out:0-5``,
``attn_out:3,7,10-12``. Negative layers count from the end (``resid_post:-1`` is the last).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from geomprobe.core.errors import GeomprobeError

SHORT_HOOKS = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
DEFAULT_HOOK = "resid_post"
_FULL = re.compile(r"^blocks\.(\d+)\.hook_(\w+)$")


def hook_name(layer: int, short: str = DEFAULT_HOOK) -> str:
    """``hook_name(3) == "blocks.3.hook_resid_post"``."""
    return f"blocks.{layer}.hook_{short}"


def parse_hook_name(name: str) -> tuple[int, str] | None:
    """``(layer, short)`` for ``blocks.{layer}.hook_{short}`` with a short name from SHORT_HOOKS, else None."""
    match = _FULL.match(name)
    if match is None or match.group(2) not in SHORT_HOOKS:
        return None
    return int(match.group(1)), match.group(2)


def hook_layer(name: str) -> int:
    """The block index a ``blocks.{l}.*`` hook belongs to."""
    match = re.match(r"^blocks\.(\d+)\.", name)
    if match is None:
        raise GeomprobeError(f"hook {name!r} is not inside a block; use names like blocks.3.hook_resid_post")
    return int(match.group(1))


def _parse_layers(text: str, n_layers: int, spec: str) -> list[int]:
    if text in ("", "all"):
        return list(range(n_layers))
    layers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        range_match = re.fullmatch(r"(-?\d+)-(-?\d+)", part)
        try:
            if range_match:
                lo, hi = (int(v) for v in range_match.groups())
                lo, hi = (v + n_layers if v < 0 else v for v in (lo, hi))
                chosen = list(range(lo, hi + 1))
                if not chosen:
                    raise GeomprobeError(f"empty layer range {part!r} in hook spec {spec!r}; write low-high")
            else:
                value = int(part)
                chosen = [value + n_layers if value < 0 else value]
        except ValueError:
            raise GeomprobeError(f"cannot read layers {text!r} in hook spec {spec!r}; use e.g. resid_post:0-5,7") from None
        for layer in chosen:
            if not 0 <= layer < n_layers:
                raise GeomprobeError(
                    f"layer {layer} in hook spec {spec!r} is out of range; this model has layers 0..{n_layers - 1}"
                )
        layers.extend(chosen)
    return layers


def resolve_hooks(specs: str | Sequence[str] | None, n_layers: int, available: Iterable[str] | None = None) -> list[str]:
    """Turn user hook specs into an ordered, de-duplicated list of full hook names.

    ``available`` (the model's ``hook_dict`` keys) is used to reject hooks the model lacks.
    """
    if specs is None or (not isinstance(specs, str) and len(specs) == 0):
        specs = [DEFAULT_HOOK]
    if isinstance(specs, str):
        specs = specs.split()
    names: list[str] = []
    for spec in specs:
        spec = spec.strip()
        full = _FULL.match(spec)
        if full:
            layer = int(full.group(1))
            if layer >= n_layers:
                raise GeomprobeError(f"layer {layer} in hook {spec!r} is out of range; this model has layers 0..{n_layers - 1}")
            candidates = [spec]
        else:
            short, _, layer_text = spec.partition(":")
            short = short.removeprefix("hook_")
            if short not in SHORT_HOOKS:
                raise GeomprobeError(
                    f"unknown hook {spec!r}; use a full name like blocks.3.hook_resid_post "
                    f"or one of {', '.join(SHORT_HOOKS)} with optional layers (resid_post:0-5)"
                )
            candidates = [hook_name(layer, short) for layer in _parse_layers(layer_text, n_layers, spec)]
        for name in candidates:
            if name not in names:
                names.append(name)
    if available is not None:
        known = set(available)
        missing = [n for n in names if n not in known]
        if missing:
            raise GeomprobeError(f"the model has no hook {missing[0]!r}; list hooks with model.bridge.hook_dict")
    return names
