"""Export steering vectors as a llama.cpp control vector (GGUF).

Layer convention (llama.cpp ``common_control_vector_load`` and ``llama_adapter_cvec``): a GGUF
control vector has architecture ``controlvector`` and one float32 1-D tensor ``direction.{k}``
per layer. ``direction.{k}`` is added to the output of 0-based block ``k`` (``l_out`` in the
graph), i.e. geomprobe's ``blocks.{k}.hook_resid_post``; ``direction.0`` is rejected by the
loader, so block 0's output cannot be steered from llama.cpp. ``blocks.{k}.hook_resid_pre`` is
block ``k-1``'s output and is written as ``direction.{k-1}``. Other hooks (attn/mlp outputs,
``resid_mid``) have no llama.cpp equivalent. llama.cpp adds the vector at every position
(prompt and generated tokens) scaled by ``--control-vector-scaled FILE S``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geomprobe.core.errors import GeomprobeError
from geomprobe.core.hooks import SHORT_HOOKS, hook_layer, parse_hook_name, resolve_hooks
from geomprobe.core.io import atomic_file, check_output_file
from geomprobe.steering.vectors import SteeringVector


def gguf_layer_for_hook(hook: str) -> int:
    """The llama.cpp ``direction.{k}`` index for a hook (block outputs only; k >= 1)."""
    match = re.fullmatch(r"blocks\.(\d+)\.hook_(resid_post|resid_pre)", hook)
    if match is None:
        raise GeomprobeError(
            f"hook {hook} has no llama.cpp control-vector slot; llama.cpp adds vectors to block outputs "
            "(export resid_post or resid_pre hooks)"
        )
    layer = int(match.group(1)) - (1 if match.group(2) == "resid_pre" else 0)
    if layer < 1:
        raise GeomprobeError(
            f"hook {hook} is the output of the embedding or of block 0, which llama.cpp cannot steer "
            "(direction.0 is rejected); leave it out with --hooks"
        )
    return layer


def vector_hooks(vector: SteeringVector, specs: str | list[str] | None) -> list[str]:
    """The vector's hooks selected by the specs other commands take (None: all of them).

    A short name without layers (``resid_post``) means every such hook the vector has; with
    layers (``resid_post:12``, ``resid_post:-1``) or a full name, each must be in the vector.
    """
    if specs is None or (not isinstance(specs, str) and len(specs) == 0):
        return list(vector.hooks)
    spec_list = specs.split() if isinstance(specs, str) else list(specs)
    n_layers = int(vector.metadata.get("n_layers") or max(hook_layer(h) for h in vector.hooks) + 1)
    chosen: list[str] = []
    for spec in spec_list:
        spec = spec.strip()
        short = spec.removeprefix("hook_")
        if spec.startswith("blocks."):  # a full name: checked against the vector below
            names = [spec]
        elif short in SHORT_HOOKS:
            names = [h for h in vector.hooks if (parse_hook_name(h) or (None, ""))[1] == short]
            if not names:
                raise GeomprobeError(f"the vector has no {short} hook; it has {', '.join(vector.hooks[:4])}")
        else:
            try:
                names = resolve_hooks([spec], n_layers)
            except GeomprobeError as exc:
                raise GeomprobeError(
                    f"cannot select {spec!r} from the vector's hooks ({', '.join(vector.hooks[:4])}): {exc}"
                ) from None
        missing = [h for h in names if h not in vector.vectors]
        if missing:
            raise GeomprobeError(f"the vector has no direction for {missing[0]}; it has {', '.join(vector.hooks[:4])}")
        chosen.extend(h for h in names if h not in chosen)
    return chosen


def plan_gguf_layers(hooks: list[str]) -> tuple[dict[str, int], dict[str, str]]:
    """``({hook: direction index}, {hook: why it is left out})`` for hooks to export.

    Block 0's output (and the embedding output, ``resid_pre`` of block 0) would be
    ``direction.0`` or below, which llama.cpp rejects; hooks other than block outputs have no
    slot. Both are left out with a reason; two hooks on one slot are refused.
    """
    layers: dict[str, int] = {}
    dropped: dict[str, str] = {}
    for hook in hooks:
        parsed = parse_hook_name(hook)
        if parsed is None or parsed[1] not in ("resid_post", "resid_pre"):
            dropped[hook] = "no llama.cpp slot (llama.cpp steers block outputs: resid_post/resid_pre)"
            continue
        layer = parsed[0] - (1 if parsed[1] == "resid_pre" else 0)
        if layer < 1:
            dropped[hook] = "the embedding or block 0's output would be direction.0, which llama.cpp rejects"
            continue
        layers[hook] = layer
    seen: dict[int, str] = {}
    for hook, layer in layers.items():
        if layer in seen:
            raise GeomprobeError(
                f"{seen[layer]} and {hook} both map to llama.cpp direction.{layer}; export one of them with --hooks"
            )
        seen[layer] = hook
    return layers, dropped


def gguf_model_hint(vector: SteeringVector) -> str:
    """The architecture (``config.model_type``, e.g. "llama") of the vector's model, as repeng writes it.

    From the vector's metadata, else the model's config read offline (a checkpoint folder or the
    Hugging Face cache), else the embedded default model's GGUF; refused when none tells.
    """
    recorded = vector.metadata.get("model_type")
    if isinstance(recorded, str) and recorded:
        return recorded
    model_id = str(vector.model_id or "")
    from geomprobe.models import DEFAULT_MODEL_ID, default_gguf_path

    if model_id in (DEFAULT_MODEL_ID, "default"):
        import gguf

        try:
            reader = gguf.GGUFReader(str(default_gguf_path()))
            part = reader.fields["general.architecture"]
            return bytes(part.parts[part.data[0]]).decode("utf-8")
        except (GeomprobeError, KeyError, OSError, ValueError):
            pass
    if model_id:
        try:
            from transformers import AutoConfig

            model_type = getattr(AutoConfig.from_pretrained(model_id, local_files_only=True), "model_type", "")
            if model_type:
                return str(model_type)
        except Exception:  # noqa: BLE001 - any failure to read a config means "unknown"; refused below
            pass
    raise GeomprobeError(
        f"cannot tell the architecture (config.model_type) of model {model_id or '(none recorded)'!r} offline; "
        "pass --model-hint, e.g. --model-hint llama"
    )


@dataclass
class GGUFExport:
    """What :func:`export_gguf` wrote: ``layers`` {hook: direction index}, ``dropped`` {hook: reason}."""

    path: Path
    layers: dict[str, int]
    dropped: dict[str, str] = field(default_factory=dict)
    model_hint: str = ""

    def __fspath__(self) -> str:  # so the result can be passed on as the file's path
        return str(self.path)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "layers": dict(self.layers), "dropped": dict(self.dropped), "model_hint": self.model_hint}


def export_gguf(
    vector: SteeringVector,
    path: str | os.PathLike,
    *,
    multiplier: float = 1.0,
    hooks: str | list[str] | None = None,
    model_hint: str | None = None,
    overwrite: bool = False,
) -> GGUFExport:
    """Write ``multiplier * vector`` as a llama.cpp control-vector GGUF file.

    ``hooks`` takes the specs other commands take (``resid_post:12``, full names; None: all the
    vector's hooks). Hooks llama.cpp cannot steer (block 0's output, non-residual hooks) are left
    out and listed in ``dropped``; refused when none is left, when a direction is not finite
    after scaling, or when the model hint (the architecture, ``config.model_type``) is unknown.
    """
    import gguf

    from geomprobe.steering.apply import check_multiplier

    multiplier = check_multiplier(multiplier)
    path = check_output_file(path, overwrite=overwrite, example_name="vector.gguf")
    chosen = vector_hooks(vector, hooks)
    layers, dropped = plan_gguf_layers(chosen)
    if not layers:
        reasons = "; ".join(f"{h}: {why}" for h, why in dropped.items())
        raise GeomprobeError(
            f"none of the chosen hooks can be a llama.cpp control vector ({reasons}); "
            "build the vector at resid_post of blocks 1 and above"
        )
    by_layer: dict[int, np.ndarray] = {}
    for hook, layer in layers.items():
        with np.errstate(over="ignore", invalid="ignore"):
            values = (vector.vectors[hook].double().numpy() * multiplier).astype(np.float32)
        if not np.isfinite(values).all():
            raise GeomprobeError(
                f"the direction for {hook} times {multiplier:g} is non-finite in float32 (NaN or inf); "
                "rebuild the vector or use a smaller --multiplier"
            )
        by_layer[layer] = values
    hint = model_hint or gguf_model_hint(vector)
    with atomic_file(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch="controlvector")
        try:
            writer.add_string("controlvector.model_hint", hint)
            writer.add_uint32("controlvector.layer_count", len(by_layer))
            for layer in sorted(by_layer):
                writer.add_tensor(f"direction.{layer}", by_layer[layer])
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return GGUFExport(path=path, layers=layers, dropped=dropped, model_hint=hint)


def read_gguf(path: str | os.PathLike) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    """Read a control-vector GGUF: ``({layer: float32 vector}, {"arch", "model_hint", "layer_count"})``."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise GeomprobeError(f"GGUF file {str(path)!r} does not exist")
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, OSError) as exc:
        raise GeomprobeError(f"{str(path)!r} is not a readable GGUF file ({exc})") from None

    def field_value(name: str) -> Any:
        f = reader.fields.get(name)
        if f is None:
            return None
        part = f.parts[f.data[0]]
        if f.types and f.types[0] == gguf.GGUFValueType.STRING:
            return bytes(part).decode("utf-8")
        return part.tolist()[0]

    vectors: dict[int, np.ndarray] = {}
    for tensor in reader.tensors:
        match = re.fullmatch(r"direction\.(\d+)", tensor.name)
        if match is None:
            raise GeomprobeError(f"{path.name} holds tensor {tensor.name!r}; a control vector holds direction.N only")
        vectors[int(match.group(1))] = np.array(tensor.data, dtype=np.float32).reshape(-1)
    info = {
        "arch": field_value("general.architecture"),
        "model_hint": field_value("controlvector.model_hint"),
        "layer_count": field_value("controlvector.layer_count"),
    }
    return vectors, info
