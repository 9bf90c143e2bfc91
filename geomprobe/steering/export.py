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
from pathlib import Path
from typing import Any

import numpy as np

from geomprobe.core.errors import GeomprobeError
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


def export_gguf(
    vector: SteeringVector,
    path: str | os.PathLike,
    *,
    multiplier: float = 1.0,
    hooks: list[str] | None = None,
    model_hint: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``multiplier * vector`` as a llama.cpp control-vector GGUF file."""
    import gguf

    from geomprobe.steering.apply import check_multiplier

    multiplier = check_multiplier(multiplier)
    path = check_output_file(path, overwrite=overwrite, example_name="vector.gguf")
    chosen = hooks or vector.hooks
    missing = [h for h in chosen if h not in vector.vectors]
    if missing:
        raise GeomprobeError(f"the vector has no direction for {missing[0]}; it has {', '.join(vector.hooks[:4])}")
    by_layer: dict[int, np.ndarray] = {}
    for hook in chosen:
        layer = gguf_layer_for_hook(hook)
        if layer in by_layer:
            raise GeomprobeError(f"two hooks map to llama.cpp layer {layer}; export one of them with --hooks")
        by_layer[layer] = (vector.vectors[hook].double().numpy() * multiplier).astype(np.float32)
    hint = model_hint or str(vector.metadata.get("model_type") or vector.model_id or "unknown")
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
    return path


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
