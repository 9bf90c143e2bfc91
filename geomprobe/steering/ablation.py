"""Directional ablation: remove a direction from the residual stream, by hooks or in the weights.

:func:`ablate` projects ``r`` (unit) out at every layer's ``resid_pre``, ``resid_mid`` and
``resid_post`` hook: ``x <- x - (x . r) r``, at every position. :func:`bake_ablation` gets the same
model by orthogonalising every matrix (and bias) that writes to the residual stream -- token and
position embeddings, each attention output projection and each MLP down projection -- so the
stream never gains a component along ``r``; it unties tied input/output embeddings first (the
unembedding reads the stream and must not change) and saves a Hugging Face checkpoint folder.

Why the two agree: the embeddings and every block output are projected in both; the MLP reads
``P(x + attn)`` either way because ``P`` is linear and idempotent.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geomprobe.core.errors import GeomprobeError
from geomprobe.core.hooks import hook_name
from geomprobe.core.io import atomic_folder, check_output_folder
from geomprobe.models.architecture import (
    architecture,
    model_type,
    model_types_supporting,
    stores_transposed,
    untie_embeddings,
)
from geomprobe.models.bridge import ensure_kv_cache_compat
from geomprobe.steering.vectors import SteeringVector

ABLATION_HOOKS = ("resid_pre", "resid_mid", "resid_post")
_SAVED = "ablated checkpoint"  # names the output folder in messages


def unit_direction(direction: SteeringVector | torch.Tensor | np.ndarray, hook: str | None = None) -> torch.Tensor:
    """A float64 unit vector from a raw direction or one hook of a :class:`SteeringVector`."""
    if isinstance(direction, SteeringVector):
        if hook is None:
            if len(direction.hooks) != 1:
                raise GeomprobeError(f"the vector holds {len(direction.hooks)} hooks; pick the direction to ablate with --hook")
            hook = direction.hooks[0]
        if hook not in direction.vectors:
            raise GeomprobeError(f"the vector has no direction for {hook}; it has {', '.join(direction.hooks[:4])}")
        vec = direction.vectors[hook].double()
    else:
        vec = (
            torch.as_tensor(np.asarray(direction) if not isinstance(direction, torch.Tensor) else direction).double().reshape(-1)
        )
    if not torch.isfinite(vec).all():
        raise GeomprobeError("the ablation direction has NaN or inf values; rebuild it")
    norm = vec.norm()
    if norm == 0:
        raise GeomprobeError("the ablation direction is zero; the classes have equal means at that hook")
    return vec / norm


@contextmanager
def ablate(
    model: Any,
    direction: SteeringVector | torch.Tensor | np.ndarray,
    *,
    hook: str | None = None,
    layers: Sequence[int] | None = None,
) -> Iterator[list[str]]:
    """Project the direction out of the residual stream at every layer (or ``layers``) while inside."""
    from geomprobe.steering.apply import require_bridge

    require_bridge(model, "ablate()")
    r = unit_direction(direction, hook)
    if r.numel() != model.d_model:
        raise GeomprobeError(
            f"ablation direction width {r.numel()} does not match the model's d_model {model.d_model}; "
            "build it from this model's activations"
        )
    ensure_kv_cache_compat(model)
    r_model = r.to(device=model.device, dtype=model.dtype)
    known = set(model.hook_names)
    chosen = range(model.n_layers) if layers is None else layers
    names = [hook_name(l, s) for l in chosen for s in ABLATION_HOOKS if hook_name(l, s) in known]

    def project_out(x, hook):
        return x - (x @ r_model).unsqueeze(-1) * r_model

    canonical = [model.bridge.hook_dict[n].name or n for n in names]
    with model.bridge.hooks(fwd_hooks=[(n, project_out) for n in canonical]):
        yield names


def _get(root: Any, path: str) -> Any:
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _project_rows(weight: torch.Tensor, r: torch.Tensor) -> None:
    """Rows are residual vectors (embeddings, Conv1D (in, d) weights): W <- W - (W r) r^T."""
    w = weight.data.double()
    weight.data.copy_((w - torch.outer(w @ r, r)).to(weight.dtype))


def _project_columns(weight: torch.Tensor, r: torch.Tensor) -> None:
    """Columns are residual vectors (nn.Linear (d, in) weights): W <- W - r (r^T W)."""
    w = weight.data.double()
    weight.data.copy_((w - torch.outer(r, r @ w)).to(weight.dtype))


def _project_bias(bias: torch.Tensor | None, r: torch.Tensor) -> None:
    if bias is not None:
        b = bias.data.double()
        bias.data.copy_((b - (b @ r) * r).to(bias.dtype))


def orthogonalize_weights(hf_model: Any, r: torch.Tensor) -> list[str]:
    """Orthogonalise, in place, every weight of ``hf_model`` that writes to the residual stream
    (the writers listed in :mod:`geomprobe.models.architecture`)."""
    arch = architecture(hf_model)
    if arch is None or not arch.writers_known:
        raise GeomprobeError(
            f"baking an ablation into {model_type(hf_model) or 'this'} models is not supported "
            f"(supported: {', '.join(model_types_supporting('writers'))}); use the hooked ablate() instead"
        )
    r = r.to(next(hf_model.parameters()).device)
    touched = []
    if untie_embeddings(hf_model):  # tied: the unembedding must keep reading the original matrix
        touched.append("untied lm_head")
    for path in arch.embeddings:
        _project_rows(_get(hf_model, path).weight, r)
        touched.append(path)
    layers_path = arch.layers
    for i, layer in enumerate(_get(hf_model, layers_path)):
        for sub in (arch.attn_writer, arch.mlp_writer):
            module = _get(layer, sub)
            if isinstance(module, torch.nn.Linear):
                _project_columns(module.weight, r)
            elif stores_transposed(module):  # GPT-2 Conv1D: y = x W + b, W is (in, out)
                _project_rows(module.weight, r)
            else:
                raise GeomprobeError(f"unexpected module type {type(module).__name__} at {layers_path}.{i}.{sub}")
            _project_bias(getattr(module, "bias", None), r)
            touched.append(f"{layers_path}.{i}.{sub}")
    return touched


def bake_ablation(
    model: Any,
    direction: SteeringVector | torch.Tensor | np.ndarray,
    out_dir: str | os.PathLike,
    *,
    hook: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Save a copy of ``model`` with ``direction`` orthogonalised out of its weights.

    ``model`` is a :class:`~geomprobe.models.LoadedModel` (its source checkpoint is re-read, the
    loaded model is left untouched) or anything :func:`~geomprobe.models.load_checkpoint` takes.
    The folder loads with ``load_model(out_dir)``.
    """
    from geomprobe.models import load_checkpoint

    r = unit_direction(direction, hook)
    check_output_folder(out_dir, overwrite=overwrite, what=_SAVED)  # before the slow checkpoint load
    source = getattr(model, "source", None) or str(model)
    if getattr(model, "model_id", "") == "HuggingFaceTB/SmolLM2-135M-Instruct" and str(source).endswith(".gguf"):
        source = "default"
    ckpt = load_checkpoint(source, dtype="float32", device="cpu")
    d_model = int(ckpt.hf_model.get_input_embeddings().weight.shape[1])
    if r.numel() != d_model:
        raise GeomprobeError(f"ablation direction width {r.numel()} does not match the model's d_model {d_model}")
    touched = orthogonalize_weights(ckpt.hf_model, r)

    def build(folder: Path) -> None:
        ckpt.hf_model.save_pretrained(folder, safe_serialization=True)
        ckpt.tokenizer.save_pretrained(folder)
        info = {
            "ablated_from": ckpt.model_id,
            "source_revision": ckpt.revision,
            "hook": hook or (direction.hooks[0] if isinstance(direction, SteeringVector) else ""),
            "direction_norm": float(
                (direction.vectors[hook or direction.hooks[0]].double().norm()) if isinstance(direction, SteeringVector) else 1.0
            ),
            "method": direction.method if isinstance(direction, SteeringVector) else "raw",
            "orthogonalised": touched,
            "unit_direction": [float(v) for v in r.tolist()],
        }
        (folder / "geomprobe-ablation.json").write_text(json.dumps(info, indent=2) + "\n")

    with atomic_folder(out_dir, overwrite=overwrite, what=_SAVED) as staging:
        build(staging)
    return Path(out_dir)
