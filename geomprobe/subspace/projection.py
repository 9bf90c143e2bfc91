"""The projection experiment: a new checkpoint from the fine-tuning update projected on the alignment subspace.

The weight matrices, their layout and the loading rules are those of :mod:`geomprobe.subspace.weights`.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from geomprobe.core.errors import GeomprobeError
from geomprobe.core.io import atomic_folder, check_output_folder
from geomprobe.subspace.basis import top_left_singular
from geomprobe.subspace.weights import _check_compatible, _load, _matrix, _settings, _state, weight_matrices

PROJECTION_MODES = ("same", "orthogonal", "opposite")


@dataclass
class ProjectionResult:
    """What :func:`project_finetune_update` wrote."""

    out_dir: Path
    mode: str
    matrices: list[dict[str, Any]]

    @property
    def energy_kept(self) -> float:
        """Pooled ||U'||^2 / ||U||^2 over the projected matrices."""
        num = sum(r["norm_new"] ** 2 for r in self.matrices)
        den = sum(r["norm_update"] ** 2 for r in self.matrices)
        return num / den if den else float("nan")


def project_finetune_update(
    base: Any,
    aligned: Any,
    finetuned: Any,
    out_dir: str | Path,
    mode: str = "orthogonal",
    *,
    k: int | None = None,
    energy: float | None = 0.9,
    include_embeddings: bool = False,
    method: str = "auto",
    device: Any = "auto",
    seed: int = 0,
    overwrite: bool = False,
    trust_remote_code: bool = False,
) -> ProjectionResult:
    """Write a checkpoint ``W_aligned + U'`` where ``U = W_finetuned - W_aligned`` is projected.

    With ``P = Q_a Q_a^T U`` (``Q_a``: top left singular basis of ``W_aligned - W_base``):
    ``same`` keeps ``U' = P`` (only what lies in the alignment subspace), ``orthogonal`` keeps
    ``U' = U - P`` (alignment subspace removed), ``opposite`` uses ``U' = -P`` (the in-subspace
    part reversed). Weights that are not compared (embeddings unless included, norms, biases)
    keep their fine-tuned values. The folder (``save_pretrained`` + tokenizer + a
    ``geomprobe-projection.json`` manifest) loads with :func:`geomprobe.models.load_model`.
    """
    from geomprobe.core.device import resolve_device

    if mode not in PROJECTION_MODES:
        raise GeomprobeError(f"unknown projection mode {mode!r}; use one of {', '.join(PROJECTION_MODES)}")
    k, energy = _settings(k, energy, method)
    out_dir = Path(out_dir)
    check_output_folder(out_dir, overwrite=overwrite, what="checkpoint")  # before the slow loads
    dev = resolve_device(device)
    src_base = _load(base, "base", trust_remote_code)
    src_al = _load(aligned, "aligned", trust_remote_code)
    src_ft = _load(finetuned, "finetuned", trust_remote_code)
    tokenizer = src_ft.tokenizer or src_al.tokenizer or src_base.tokenizer
    if tokenizer is None:
        raise GeomprobeError("no tokenizer to save with the new checkpoint; pass at least one checkpoint as a path or Checkpoint")
    matrices = weight_matrices(src_base.model, include_embeddings)
    _check_compatible(matrices, src_base.model, src_al.model, "aligned")
    _check_compatible(matrices, src_base.model, src_ft.model, "finetuned")
    # Never modify a model the caller handed us.
    if any("_original_component" in n for n in src_ft.model.state_dict()):
        raise GeomprobeError(
            "the fine-tuned model is wrapped in a TransformerLens bridge; "
            "pass it as a path or load_checkpoint() result to project it"
        )
    target: Any = src_ft.model if src_ft.loaded_here else copy.deepcopy(src_ft.model)
    sb, sa, st = _state(src_base.model), _state(src_al.model), _state(target)
    report = []
    with torch.no_grad():
        for m in matrices:
            W0 = _matrix(sb, m).to(dev, torch.float64)
            W1 = _matrix(sa, m).to(dev, torch.float64)
            U = _matrix(st, m).to(dev, torch.float64) - W1
            A = W1 - W0
            if float(torch.linalg.norm(A)) == 0.0:
                P, ka, meth = torch.zeros_like(U), 0, ""
            else:
                top = top_left_singular(A, k=k, energy=energy, method=method, seed=seed)
                P, ka, meth = top.Q @ (top.Q.T @ U), top.Q.shape[1], top.method
            new = {"same": P, "orthogonal": U - P, "opposite": -P}[mode]
            W_new = (W1 + new).to(torch.float32).cpu()
            param = st[m.name][0]
            param.copy_(W_new.T if m.transposed else W_new)
            nu = float(torch.linalg.norm(U))
            report.append(
                {
                    "name": m.name,
                    "layer": m.layer,
                    "module": m.module,
                    "k_a": ka,
                    "svd_method": meth,
                    "norm_update": nu,
                    "norm_new": float(torch.linalg.norm(new)),
                    "energy_in_aligned": float(torch.linalg.norm(P)) ** 2 / nu**2 if nu else float("nan"),
                }
            )
    with atomic_folder(out_dir, overwrite=overwrite, what="checkpoint") as staging:
        target.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        manifest = {
            "geomprobe": "subspace projection",
            "mode": mode,
            "k": k,
            "energy": energy,
            "include_embeddings": include_embeddings,
            "base": src_base.model_id,
            "aligned": src_al.model_id,
            "finetuned": src_ft.model_id,
            "matrices": [
                {key: (None if isinstance(v, float) and not math.isfinite(v) else v) for key, v in r.items()} for r in report
            ],
        }
        (staging / "geomprobe-projection.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return ProjectionResult(out_dir, mode, report)
